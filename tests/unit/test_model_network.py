"""SCANet and the ResNet34 baseline: shapes, attention, weight sharing, learning."""

from __future__ import annotations

import pytest
import torch

from scanet_node.model.network import (
    STANDARDIZE_EPS,
    Architecture,
    ResNet34Slices,
    SCANet,
    build,
    loss_fn,
    set_input_mean,
    set_input_scale,
)

SMALL = 32  # SAT grid 2 x 2: every shape rule holds, a forward pass takes milliseconds


def _input(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 2, 26, size, size, generator=torch.Generator().manual_seed(0))


def test_scanet_shapes_and_attention_at_full_size() -> None:
    model = SCANet().eval()
    with torch.inference_mode():
        out = model(_input(1, 224))
    assert out.logit.shape == (1,)
    assert out.aux.shape == (1, 5)
    assert out.slice_weights.shape == (1, 26)
    assert out.sat_maps.shape == (1, 26, 14, 14)
    assert [tuple(m.shape) for m in out.cat_attention] == [(1, 5, 5)] * 4 + [(1, 6, 6)]
    assert torch.allclose(out.slice_weights.sum(dim=1), torch.ones(1))
    # each slice's SAT map is the attention its 196 positions receive: a distribution
    assert torch.allclose(out.sat_maps.sum(dim=(2, 3)), torch.ones(1, 26), atol=1e-5)
    assert bool((out.sat_maps >= 0).all())


def test_small_input_size_and_batch() -> None:
    model = SCANet(Architecture(size=SMALL)).eval()
    with torch.inference_mode():
        out = model(_input(3, SMALL))
    assert out.logit.shape == (3,)
    assert out.sat_maps.shape == (3, 26, 2, 2)
    assert torch.allclose(out.slice_weights.sum(dim=1), torch.ones(3))


def test_branch_weights_are_shared_across_neighbourhoods() -> None:
    model = SCANet(Architecture(size=SMALL))
    names = [name for name, _ in model.named_parameters()]
    # one parameter set for layer2-4 and one CAT, whatever the number of neighbourhoods
    for stage in ("layer2.", "layer3.", "layer4.", "cat."):
        assert sum(n.startswith(stage) for n in names) > 0
    assert not any(n.startswith(("branches", "ind_features")) for n in names)
    six_groups = SCANet(
        Architecture(size=SMALL, groups=((0, 5), (5, 9), (9, 13), (13, 17), (17, 21), (21, 26)))
    )
    counts = {
        name: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("aux."))
        for name, m in (("five", model), ("six", six_groups))
    }
    assert counts["five"] == counts["six"]
    total = sum(p.numel() for p in SCANet().parameters())
    assert 22_000_000 < total < 24_000_000  # one ResNet34 (21.3 M) + SAT + CAT + heads


def test_every_slice_goes_through_the_same_branch() -> None:
    """Swapping two slices of one neighbourhood permutes their features, nothing else."""
    model = SCANet(Architecture(size=SMALL)).eval()
    x = _input(1, SMALL)
    swapped = x.clone()
    swapped[:, :, [3, 17]] = x[:, :, [17, 3]]
    with torch.inference_mode():
        a, _ = model.slice_features(x)
        b, _ = model.slice_features(swapped)
    assert torch.allclose(a[:, 3], b[:, 17], atol=1e-5)
    assert torch.allclose(a[:, 17], b[:, 3], atol=1e-5)


def test_baseline_shapes() -> None:
    model = ResNet34Slices(Architecture(kind="resnet34", size=SMALL)).eval()
    with torch.inference_mode():
        out = model(_input(2, SMALL))
    assert out.logit.shape == (2,)
    assert out.aux.shape == (2, 0)
    assert torch.allclose(out.slice_weights, torch.full((2, 26), 1 / 26))


@pytest.mark.parametrize("kind", ["scanet", "resnet34"])
def test_a_few_steps_reduce_the_loss_on_a_tiny_batch(kind: str) -> None:
    torch.manual_seed(0)
    model = build(Architecture(kind=kind, size=SMALL, dropout=0.0, sat_dropout=0.0))
    x = _input(4, SMALL)
    y = torch.tensor([0, 1, 0, 1])
    x[y == 1, 1] *= 0.5  # something to learn
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> float:
        # train mode (batch statistics; dropout is off): eval mode would judge the running
        # statistics, which eight steps have barely moved
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    model.train()
    before = loss()
    for _ in range(8):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
    assert loss() < before


def test_architecture_is_checked() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        Architecture(size=100)
    with pytest.raises(ValueError, match="cover slices"):
        Architecture(groups=((0, 5), (6, 26)))
    with pytest.raises(ValueError, match="kind"):
        Architecture(kind="vit")
    arch = Architecture(size=112)
    assert Architecture.from_dict(arch.as_dict()) == arch
    with pytest.raises(ValueError, match=r"B x 2 x 26 x 32 x 32 input, got \(1, 2, 26, 64, 64\)"):
        SCANet(Architecture(size=SMALL))(_input(1, 64))


@pytest.mark.parametrize("kind", ["scanet", "resnet34"])
def test_heads_stay_float32_under_bf16_autocast(kind: str) -> None:
    """Untrained logits differ by ~1e-3; bfloat16 would round them into ties (AUC 0.5)."""
    torch.manual_seed(0)
    model = build(Architecture(kind=kind, size=SMALL)).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_input(6, SMALL))
    assert out.logit.dtype == torch.float32 and out.slice_weights.dtype == torch.float32
    assert len(set(out.logit.tolist())) == 6


def test_mean_subtraction_is_a_saved_buffer() -> None:
    torch.manual_seed(0)
    centred = SCANet(Architecture(size=SMALL, subtract_mean=True)).eval()
    plain = SCANet(Architecture(size=SMALL)).eval()
    plain.load_state_dict(
        {k: v for k, v in centred.state_dict().items() if k != "input_mean"}, strict=True
    )
    x, mean = _input(2, SMALL), torch.rand(2, 26, SMALL, SMALL)
    set_input_mean(centred, mean[None].expand(4, -1, -1, -1, -1))
    assert torch.equal(centred.state_dict()["input_mean"], mean)
    with torch.inference_mode():
        assert torch.allclose(centred(x).logit, plain(x - mean).logit, atol=1e-6)


def test_standardisation_is_saved_with_the_weights() -> None:
    torch.manual_seed(0)
    standard = SCANet(Architecture(size=SMALL, standardize=True)).eval()
    plain = SCANet(Architecture(size=SMALL)).eval()
    plain.load_state_dict(
        {k: v for k, v in standard.state_dict().items() if not k.startswith("input_")},
        strict=True,
    )
    x, mean = _input(2, SMALL), torch.rand(2, 26, SMALL, SMALL)
    std = torch.rand(2, 26, SMALL, SMALL) / 10
    set_input_mean(standard, mean[None])
    set_input_scale(standard, std)
    assert torch.allclose(standard.state_dict()["input_scale"], std + STANDARDIZE_EPS)
    with torch.inference_mode():
        expected = plain((x - mean) / (std + STANDARDIZE_EPS)).logit
        assert torch.allclose(standard(x).logit, expected, atol=1e-5)
