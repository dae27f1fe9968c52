"""Checkpoints and their cards: round trip, refusals with reasons, the Predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scanet_node.model.checkpoint import (
    CheckpointError,
    ModelCard,
    load_checkpoint,
    preprocessing,
    read_card,
    save_checkpoint,
)
from scanet_node.model.network import Architecture, build
from scanet_node.model.predictor import Predictor

SMALL = 32


def _card() -> ModelCard:
    return ModelCard(
        architecture={},
        preprocessing=preprocessing(SMALL),
        training={"data": "unit test"},
        metrics={"roc_auc": 0.5},
        threshold=0.42,
        intended_use="tests",
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build(Architecture(size=SMALL)).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, _card())
    return path, model


def test_round_trip_keeps_weights_card_and_outputs(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded, card = load_checkpoint(path)
    assert card.threshold == 0.42
    assert card.architecture["size"] == SMALL and card.architecture["kind"] == "scanet"
    assert card.preprocessing["windows_hu"] == {"ncct": [0.0, 100.0], "cta": [0.0, 600.0]}
    assert len(card.weights_sha256) == 64 and card.parameters > 20_000_000
    assert card.synthetic and "SYNTHETIC" in path.with_suffix(".md").read_text()
    # weights are stored in half precision: the loaded model equals the original rounded so
    for name, value in model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[name], expected), name
    x = torch.rand(1, 2, 26, SMALL, SMALL)
    with torch.inference_mode():
        assert torch.allclose(loaded(x).logit, model(x).logit, atol=1e-2)
    assert read_card(path).weights_sha256 == card.weights_sha256


def _rewrite(path: Path, change_card=None, change_state=None) -> None:  # type: ignore[no-untyped-def]
    blob = torch.load(path, weights_only=True)
    card = json.loads(blob["card"])
    if change_card:
        change_card(card)
    if change_state:
        change_state(blob["state_dict"])
    blob["card"] = json.dumps(card)
    torch.save(blob, path)


def test_refuses_another_architecture_version(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    _rewrite(path, change_card=lambda c: c["architecture"].update(version=99))
    with pytest.raises(CheckpointError, match="architecture version is 99, this code builds"):
        load_checkpoint(path)


def test_refuses_a_card_that_does_not_describe_the_weights(
    saved: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = saved
    _rewrite(path, change_card=lambda c: c["architecture"].update(size=64))
    with pytest.raises(CheckpointError, match="do not fit the scanet the card describes"):
        load_checkpoint(path)
    _rewrite(path, change_card=lambda c: c["architecture"].update(heads=3))
    with pytest.raises(CheckpointError, match="does not fit this code"):
        load_checkpoint(path)


def test_refuses_altered_weights(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    _rewrite(path, change_state=lambda s: s["combine.bias"].add_(1.0))
    with pytest.raises(CheckpointError, match=r"SHA-256 .* does not match the card"):
        load_checkpoint(path)


def test_refuses_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a scanet-node checkpoint"):
        load_checkpoint(junk)
    torch.save({"state_dict": {}}, junk)
    with pytest.raises(CheckpointError, match="is not a scanet-node checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_predictor_is_deterministic_on_cpu(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    predictor = Predictor(path, device="cpu")
    assert predictor.input_size == SMALL
    x = np.random.default_rng(0).random((2, 26, SMALL, SMALL), dtype=np.float32)
    a, b = predictor.predict(x), predictor.predict(x)
    assert a.probability == b.probability
    np.testing.assert_array_equal(a.slice_weights, b.slice_weights)
    np.testing.assert_array_equal(a.sat_maps, b.sat_maps)
    assert 0.0 <= a.probability <= 1.0
    assert a.positive == (a.probability >= 0.42) and a.threshold == 0.42
    assert a.slice_weights.shape == (26,) and a.sat_maps.shape == (26, 2, 2)
    assert a.slice_weights.sum() == pytest.approx(1.0, abs=1e-5)
    volume = a.attention_volume(SMALL)
    assert volume.shape == (26, SMALL, SMALL) and volume.max() == pytest.approx(1.0)
    # each slice's map is a distribution scaled by its slice weight
    assert np.corrcoef(volume.mean(axis=(1, 2)), a.slice_weights)[0, 1] > 0.99
    assert predictor.describe()["synthetic"] is True
    with pytest.raises(ValueError, match="prepare at size 32"):
        predictor.predict(np.zeros((2, 26, 64, 64), dtype=np.float32))


def test_predictor_without_shipped_weights_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scanet_node.model.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "DEFAULT_CHECKPOINT", tmp_path / "scanet-demo.pt")
    with pytest.raises(CheckpointError, match="the demo weights are missing"):
        Predictor()
