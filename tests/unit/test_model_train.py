"""Training, cross-validation, resuming and the train/evaluate commands on a tiny cohort."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scanet_node.cli import main
from scanet_node.model.checkpoint import read_card
from scanet_node.model.data import CohortError, load_cohort, read_labels
from scanet_node.model.experiment import cross_validate
from scanet_node.model.network import STANDARDIZE_EPS, Architecture, Output, slab_loss
from scanet_node.model.train import (
    RESNET_DEPTHS,
    TrainSettings,
    augment,
    fit,
    learning_rate,
    misregister,
    training_targets,
)

SMALL = 32


def _tiny_cohort(root: Path, cases: int = 16, seed: int = 0) -> Path:
    """Cases whose label shows as a brighter CTA band around slab 8."""
    rng = np.random.default_rng(seed)
    (root / "inputs").mkdir(parents=True)
    rows = []
    for i in range(cases):
        label = i % 2
        x = rng.random((2, 26, SMALL, SMALL), dtype=np.float32) * 0.2 + 0.1
        if label:
            x[1, 7:10, 8:24, 8:24] += 0.5
        case = f"T{i:03d}"
        np.savez_compressed(root / "inputs" / f"{case}.npz", tensor=x.astype(np.float16))
        rows.append([case, label, 0.8 if label else 0.2, 8])
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "label", "probability", "clot_slab"])
        writer.writerows(rows)
    return root


FAST = TrainSettings(epochs=2, batch_size=4, lr=1e-3, patience=5, folds=2, val_fraction=0.25)


def test_load_cohort_reads_inputs_and_reports_what_it_left_out(tmp_path: Path) -> None:
    root = _tiny_cohort(tmp_path / "c", cases=6)
    with (root / "labels.csv").open("a") as fh:
        fh.write("MISSING,1,0.5,8\n")
    cohort = load_cohort(root, SMALL)
    assert len(cohort) == 6 and cohort.inputs.shape == (6, 2, 26, SMALL, SMALL)
    assert cohort.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert (
        "MISSING" in cohort.excluded and "neither inputs/MISSING.npz" in cohort.excluded["MISSING"]
    )
    with pytest.raises(CohortError, match=r"holds a \(2, 26, 32, 32\) input; the model takes"):
        load_cohort(root, 64)
    (root / "labels.csv").write_text("case_id,label\nT000,2\n")
    with pytest.raises(CohortError, match="line 2: label must be 0 or 1"):
        load_cohort(root, SMALL)


def test_augment_keeps_shape_range_and_background() -> None:
    x = torch.zeros(4, 2, 26, SMALL, SMALL)
    x[:, :, :, 8:24, 8:24] = 0.5
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert int((out > 0).sum()) == int((x > 0).sum())  # shifted and flipped, never grown


def _centre_of_mass(v: torch.Tensor) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in v.shape], indexing="ij"))
    return (grid * v).sum(dim=(1, 2, 3)) / v.sum()


def test_misregistration_moves_each_study_by_about_the_registrations_error() -> None:
    """A dot moves by up to ~mm per axis (rotation and scale add a little at the edge), the CTA
    a little more or less than the NCCT, and nothing appears outside the head."""
    x = torch.zeros(16, 2, 26, 112, 112)
    x[:, :, 13, 56, 56] = 1.0
    assert misregister(x, torch.Generator(), 0.0) is x
    out = misregister(x, torch.Generator().manual_seed(0), 3.0)
    assert out.shape == x.shape
    voxel = torch.tensor([5.0, 180 / 112, 180 / 112])
    moves = torch.stack(
        [
            torch.stack([(_centre_of_mass(out[i, c]) - torch.tensor([13, 56, 56])) * voxel
                         for c in (0, 1)])
            for i in range(len(x))
        ]
    )  # fmt: skip
    ncct, between = moves[:, 0], moves[:, 1] - moves[:, 0]
    assert float(ncct.abs().max()) <= 3.0 + 0.5
    assert 1.0 < float(ncct.norm(dim=1).median()) < 4.5  # ~3 mm, as prepare's median
    assert 0.0 < float(between.abs().max()) <= 1.0 + 0.5  # the CTA's own third
    assert float(out.sum(dim=(2, 3, 4)).min()) > 0.7  # the dot survives trilinear resampling
    assert float(out[:, :, :5].abs().max()) == 0.0  # no signal from outside the grid
    with pytest.raises(ValueError, match="misregister_mm"):
        TrainSettings(misregister_mm=-1)
    # states saved before the option existed resume; a run with it does not resume one without
    assert "misregister" not in TrainSettings().key()
    assert TrainSettings(misregister_mm=3).key() != TrainSettings().key()


def test_standardised_networks_are_augmented_in_what_they_see() -> None:
    from scanet_node.model.network import build, set_input_mean, set_input_scale
    from scanet_node.model.train import augment_standardised

    model = build(Architecture(size=SMALL, standardize=True))
    anatomy = torch.rand(2, 26, SMALL, SMALL, generator=torch.Generator().manual_seed(1))
    set_input_mean(model, anatomy[None])
    set_input_scale(model, torch.full_like(anatomy, 0.01))
    x = anatomy.expand(4, -1, -1, -1, -1).clone()  # studies that equal the cohort mean
    out = augment_standardised(x, model, torch.Generator().manual_seed(0))
    # Shifts, flips and scaling of an all-zero standardised input change nothing it sees...
    seen = (out - anatomy) / (0.01 + STANDARDIZE_EPS)
    assert float(seen.abs().max()) < 1e-3
    # ... whereas augmenting the raw input would put voxels many SDs off the mean.
    raw = (augment(x, torch.Generator().manual_seed(0)) - anatomy) / (0.01 + STANDARDIZE_EPS)
    assert float(raw.abs().max()) > 1.0
    # A study far from the mean (a bright artery: 8 SDs) reaches the network as it is, scaled
    # by the augmentation's +-5 % at most: never clipped to the windowed range's 1.
    bright = x.clone()
    bright[:, 1, 10, 10, 10] = anatomy[1, 10, 10, 10] + 8 * (0.01 + STANDARDIZE_EPS)
    seen = (augment_standardised(bright, model, torch.Generator().manual_seed(0)) - anatomy) / (
        0.01 + STANDARDIZE_EPS
    )
    assert 7.5 <= float(seen[:, 1].amax(dim=(1, 2, 3)).min()) <= 8.5


def test_fit_is_resumable_to_the_same_result(tmp_path: Path) -> None:
    cohort = load_cohort(_tiny_cohort(tmp_path / "c"), SMALL)
    arch = Architecture(size=SMALL)
    args = (cohort.inputs[:12], cohort.labels[:12], cohort.inputs[12:], cohort.labels[12:])
    whole = fit(arch, *args, FAST, state_path=tmp_path / "a.pt", progress=False)
    first = fit(
        arch, *args, TrainSettings(**{**FAST.__dict__, "epochs": 1}),
        state_path=tmp_path / "b.pt", progress=False,
    )  # fmt: skip
    assert first.epochs_run == 1
    resumed = fit(arch, *args, FAST, state_path=tmp_path / "b.pt", progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_cross_validation_writes_table_plots_and_resumes(tmp_path: Path) -> None:
    cohort = load_cohort(_tiny_cohort(tmp_path / "c"), SMALL)
    out = tmp_path / "cv"
    result = cross_validate(cohort, FAST, out, progress=False)
    assert set(result.per_fold) == {"scanet", "resnet34", "hu-logistic"}
    assert all(len(folds) == 2 for folds in result.per_fold.values())
    for method, p in result.probabilities.items():
        assert np.all((p >= 0) & (p <= 1)), method
    table = (out / "table.md").read_text()
    for row in ("| SCANet |", "| ResNet34 (slice-averaged) |", "| Logistic regression on HU"):
        assert row in table
    assert "Oracle ROC-AUC" in table
    for name in ("roc.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 16
    # the completed folds are kept: a second run reads them instead of training again
    stamp = (out / "fold0-scanet.json").stat().st_mtime_ns
    again = cross_validate(cohort, FAST, out, progress=False)
    assert (out / "fold0-scanet.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.probabilities["scanet"], result.probabilities["scanet"])


def test_train_and_evaluate_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _tiny_cohort(tmp_path / "train")
    held_out = _tiny_cohort(tmp_path / "test", cases=8, seed=1)
    out = tmp_path / "run"
    common = ["--size", str(SMALL), "--epochs", "1", "--batch-size", "4", "--lr", "1e-3"]
    assert main(["train", "--cohort", str(train), "--out", str(out), "--folds", "2", *common]) == 0
    card = read_card(out / "scanet.pt")
    assert card.synthetic and card.preprocessing["size"] == SMALL
    assert set(card.metrics["cross_validation"]) == {"scanet", "resnet34", "hu-logistic"}
    assert card.training["settings"]["lr"] == 1e-3
    assert "SYNTHETIC" in (out / "scanet.md").read_text()
    # the drift reference of a template-space cohort: the inputs' intensities and the
    # predictions (no registration, so no similarity or brain volume to describe)
    assert {"ncct_p50_hu", "cta_p90_hu", "probability"} <= set(card.reference)
    assert "registration_similarity" not in card.reference
    assert card.reference["probability"]["n"] == len(read_labels(train / "labels.csv"))
    assert "## Drift reference" in (out / "scanet.md").read_text()
    report = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(out / "scanet.pt")]
    argv += [
        "--checkpoint",
        str(out / "resnet34.pt"),
        "--cohort",
        str(held_out),
        "--out",
        str(report),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Held-out evaluation on 8 cases" in printed and "within one slice of the clot" in printed
    result = json.loads((report / "evaluation.json").read_text())
    names = [r["name"] for r in result["results"]]
    assert names[0].startswith("SCANet (scanet.pt")
    assert names[1].startswith("ResNet34 (slice-averaged) (resnet34.pt")
    assert result["oracle_auc"] == 1.0
    assert (report / "roc.png").is_file() and (report / "reliability.png").is_file()


def test_fine_tuning_starts_from_a_checkpoint_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init: the same architecture's weights and input standardisation are the start, the
    card names them; another architecture, or --init with cross-validation, is refused."""
    import torch as th

    from scanet_node.model.checkpoint import load_checkpoint

    common = ["--size", str(SMALL), "--batch-size", "4", "--lr", "1e-3", "--folds", "0"]
    common += ["--standardize", "--no-baselines"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--cohort", str(_tiny_cohort(tmp_path / "a")), "--out", str(first),
                 "--epochs", "1", *common]) == 0  # fmt: skip
    start, start_card = load_checkpoint(first / "scanet.pt")
    tuned_on = _tiny_cohort(tmp_path / "b", seed=3)
    argv = ["train", "--cohort", str(tuned_on), "--out", str(second), "--epochs", "1", *common]
    assert main([*argv, "--init", str(first / "scanet.pt"), "--lr", "1e-9"]) == 0
    tuned, card = load_checkpoint(second / "scanet.pt")
    origin = card.training["initialised_from"]
    assert (
        origin["weights_sha256"] == start_card.weights_sha256 == card.training["settings"]["init"]
    )
    assert origin["checkpoint"] == "scanet.pt" and origin["cases"] == 16
    # the start's standardisation is kept (not the new cohort's), and at lr 1e-9 the weights
    # barely move from the start (batch norm's running statistics do, with the new data)
    for name in ("input_mean", "input_scale"):
        assert th.equal(dict(tuned.named_buffers())[name], dict(start.named_buffers())[name])
    before = dict(start.named_parameters())
    moved = max(float((p - before[n]).abs().max()) for n, p in tuned.named_parameters())
    assert moved < 1e-3
    assert main([*argv, "--init", str(first / "scanet.pt"), "--folds", "2"]) == 2
    assert "use it with --folds 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not the"):
        main([*argv, "--init", str(first / "scanet.pt"), "--depth", "18"])


def test_soft_targets_replace_labels_where_the_probability_is_known() -> None:
    labels, soft = np.array([1, 0, 1]), np.array([0.8, 0.3, np.nan])
    assert training_targets(labels, soft, FAST).tolist() == [1.0, 0.0, 1.0]
    settings = TrainSettings(soft_targets=True)
    assert training_targets(labels, soft, settings).tolist() == [0.8, 0.3, 1.0]


def test_cosine_schedule_falls_from_lr_to_near_zero() -> None:
    settings = TrainSettings(lr=3e-4, epochs=10, schedule="cosine")
    rates = [learning_rate(settings, e) for e in range(10)]
    assert rates[0] == pytest.approx(3e-4)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert rates[-1] < 0.03 * 3e-4
    assert learning_rate(FAST, 7) == FAST.lr
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(schedule="step")
    with pytest.raises(ValueError, match="optimizer"):
        TrainSettings(optimizer="sgd")


def test_slab_loss_is_the_negative_log_mass_near_the_clot() -> None:
    weights = torch.full((2, 26), 1 / 26)
    out = Output(torch.zeros(2), torch.zeros(2, 0), weights, torch.zeros(2, 26, 0, 0))
    # three slabs of 26 are within one of slab 8; the unknown row (-1) is left out
    assert float(slab_loss(out, torch.tensor([8, -1]))) == pytest.approx(-np.log(3 / 26))
    assert float(slab_loss(out, torch.tensor([0, -1]))) == pytest.approx(-np.log(2 / 26))
    assert float(slab_loss(out, torch.tensor([-1, -1]))) == 0.0
    peaked = torch.zeros(1, 26)
    peaked[0, 9] = 1.0
    one = Output(torch.zeros(1), torch.zeros(1, 0), peaked, torch.zeros(1, 26, 0, 0))
    assert float(slab_loss(one, torch.tensor([8]))) == pytest.approx(0.0, abs=1e-6)


def test_the_cpu_recipe_trains_with_its_options_and_records_its_curve(tmp_path: Path) -> None:
    """ResNet18 depth, AdamW, cosine, soft targets and the slab term: a curve row per epoch."""
    cohort = load_cohort(_tiny_cohort(tmp_path / "c"), SMALL)
    settings = TrainSettings(
        epochs=2, batch_size=4, lr=1e-3, folds=0, val_fraction=0.25, layers=RESNET_DEPTHS[18],
        optimizer="adamw", schedule="cosine", soft_targets=True, slab_weight=0.5,
        standardize=True, cpu_bf16=True, select="last", misregister_mm=3.0,
    )  # fmt: skip
    arch = settings.architecture("scanet", SMALL)
    assert arch.layers == (2, 2, 2, 2)
    curve = tmp_path / "curve.csv"
    result = fit(
        arch, cohort.inputs[:12], cohort.labels[:12], cohort.inputs[12:], cohort.labels[12:],
        settings, train_soft=cohort.probabilities[:12], train_slabs=cohort.clot_slabs[:12],
        curve_path=curve, progress=False,
    )  # fmt: skip
    with curve.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["seconds"]) > 0 and np.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[1]["lr"]) < float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert len(result.history) == 2
    assert result.best_epoch == 2  # "last": the end of the schedule, whatever the AUC
    assert result.best_auc == result.history[-1]["val_auc"] or np.isnan(result.best_auc)
    with pytest.raises(ValueError, match="select"):
        TrainSettings(select="first")
    # which epoch is kept does not change the run: a state saved with "best" resumes as "last"
    assert TrainSettings(select="best").key() == TrainSettings(select="last").key()
