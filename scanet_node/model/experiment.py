"""Cross-validation, the final model, held-out evaluation, and their reports.

``cross_validate`` runs SCANet, the slice-averaged ResNet34 and the HU-feature logistic
regression in the same stratified folds and writes, under its output folder:

* ``table.md``: the paper's Table 1 shape (mean +- std over folds) plus each fold's row;
* ``predictions.csv``: every case's out-of-fold probability per method;
* ``roc.png`` and ``reliability.png``: pooled out-of-fold ROC curves and calibration.

Completed folds are kept (``fold<k>-<method>.json``), so a stopped run resumes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from scanet_node.model import metrics as mt
from scanet_node.model.data import Cohort, stratified_folds
from scanet_node.model.features import HUBaseline, hu_features
from scanet_node.model.network import Architecture
from scanet_node.model.train import FitResult, TrainSettings, fit, inner_split, predict

logger = logging.getLogger(__name__)

METHOD_LABELS = {
    "scanet": "SCANet",
    "resnet34": "ResNet34 (slice-averaged)",
    "hu-logistic": "Logistic regression on HU features",
}


@dataclass
class CVResult:
    """Out-of-fold predictions and per-fold metrics of each method."""

    folds: list[npt.NDArray[np.int64]]
    probabilities: dict[str, npt.NDArray[np.float64]]
    per_fold: dict[str, list[mt.Metrics]]
    best_epochs: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Mean and std of every metric per method, for the card."""
        return {
            method: {k: [round(m, 4), round(s, 4)] for k, (m, s) in mt.summarise(folds).items()}
            for method, folds in self.per_fold.items()
        }


def cross_validate(
    cohort: Cohort,
    settings: TrainSettings,
    out_dir: Path,
    *,
    methods: Sequence[str] = ("scanet", "resnet34", "hu-logistic"),
    progress: bool = True,
) -> CVResult:
    """Stratified k-fold CV of ``methods`` on ``cohort``; reports written to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = stratified_folds(cohort.labels, settings.folds, settings.seed)
    n = len(cohort)
    probabilities = {m: np.full(n, np.nan) for m in methods}
    per_fold: dict[str, list[mt.Metrics]] = {m: [] for m in methods}
    best_epochs: dict[str, list[int]] = {m: [] for m in methods}
    features = hu_features(cohort.inputs) if "hu-logistic" in methods else None
    for k, val_idx in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(n), val_idx)
        for method in methods:
            done = out_dir / f"fold{k}-{method}.json"
            if done.is_file():
                saved = json.loads(done.read_text())
                p = np.array(saved["probabilities"], dtype=float)
                best_epochs[method].append(int(saved.get("best_epoch", 0)))
            elif method == "hu-logistic":
                assert features is not None
                model = HUBaseline(seed=settings.seed).fit(
                    features[train_idx], cohort.labels[train_idx]
                )
                p = model.predict(features[val_idx])
                best_epochs[method].append(0)
            else:
                inner_train, inner_val = inner_split(
                    cohort.labels[train_idx], settings.val_fraction, settings.seed + k
                )
                fit_idx, es_idx = train_idx[inner_train], train_idx[inner_val]
                fitted = fit(
                    settings.architecture(method, cohort.size),
                    cohort.inputs[fit_idx],
                    cohort.labels[fit_idx],
                    cohort.inputs[es_idx],
                    cohort.labels[es_idx],
                    settings,
                    train_soft=cohort.probabilities[fit_idx],
                    train_slabs=cohort.clot_slabs[fit_idx],
                    state_path=out_dir / f"state-fold{k}-{method}.pt",
                    curve_path=out_dir / f"curve-fold{k}-{method}.csv",
                    desc=f"fold {k + 1}/{len(folds)} {method}",
                    progress=progress,
                )
                p = predict(
                    fitted.model, cohort.inputs[val_idx], cpu_bf16=settings.cpu_bf16
                ).probabilities
                best_epochs[method].append(fitted.best_epoch)
                (out_dir / f"state-fold{k}-{method}.pt").unlink(missing_ok=True)
            if not done.is_file():
                done.write_text(
                    json.dumps(
                        {
                            "fold": k,
                            "method": method,
                            "cases": [cohort.case_ids[i] for i in val_idx],
                            "probabilities": p.tolist(),
                            "best_epoch": best_epochs[method][-1],
                        }
                    )
                )
            probabilities[method][val_idx] = p
            per_fold[method].append(mt.compute(p, cohort.labels[val_idx]))
            logger.info("fold %d %s: AUC %.3f", k + 1, method, per_fold[method][-1].roc_auc)
    result = CVResult(folds, probabilities, per_fold, best_epochs)
    write_cv_report(cohort, result, settings, out_dir)
    return result


def write_cv_report(
    cohort: Cohort, result: CVResult, settings: TrainSettings, out_dir: Path
) -> str:
    """``table.md``, ``predictions.csv``, ``roc.png``, ``reliability.png``; returns the table."""
    rows = {METHOD_LABELS.get(m, m): folds for m, folds in result.per_fold.items()}
    text = mt.table(
        rows,
        f"{settings.folds}-fold cross-validation on {len(cohort)} cases of {cohort.root.name} "
        f"(mean ± std over folds; threshold 0.5)",
    )
    text += (
        "\nPer fold:\n\n| Method | Fold | n | ROC-AUC | Accuracy | Precision | Sensitivity "
        "| Specificity | Brier |\n"
    )
    text += "|---" * 9 + "|\n"
    for method, folds in result.per_fold.items():
        for k, m in enumerate(folds):
            text += (
                f"| {METHOD_LABELS.get(method, method)} | {k + 1} | {m.n} | {m.roc_auc:.3f} | "
                f"{m.accuracy:.3f} | {m.precision:.3f} | {m.sensitivity:.3f} | "
                f"{m.specificity:.3f} | {m.brier:.3f} |\n"
            )
    oracle = _oracle(cohort)
    if oracle is not None:
        text += f"\nOracle ROC-AUC of the cohort (true synthetic probabilities): {oracle:.3f}\n"
    (out_dir / "table.md").write_text(text)
    with (out_dir / "predictions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "label", *result.probabilities])
        for i, case in enumerate(cohort.case_ids):
            writer.writerow(
                [case, int(cohort.labels[i])]
                + [round(float(result.probabilities[m][i]), 6) for m in result.probabilities]
            )
    plot_curves(
        {METHOD_LABELS.get(m, m): p for m, p in result.probabilities.items()},
        cohort.labels,
        out_dir,
        title=f"{settings.folds}-fold CV, {cohort.root.name}",
    )
    return text


def _oracle(cohort: Cohort) -> float | None:
    if np.all(np.isfinite(cohort.probabilities)) and 0 < cohort.labels.sum() < len(cohort):
        return mt.compute(cohort.probabilities, cohort.labels).roc_auc
    return None


def plot_curves(
    probabilities: Mapping[str, npt.NDArray[np.float64]],
    labels: npt.NDArray[np.integer],
    out_dir: Path,
    *,
    title: str,
) -> dict[str, Path]:
    """``roc.png`` (ROC per method, AUC in the legend) and ``reliability.png`` (calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {"roc": out_dir / "roc.png", "reliability": out_dir / "reliability.png"}
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, p in probabilities.items():
        fpr, tpr = mt.roc_curve(p, labels)
        ax.plot(fpr, tpr, label=f"{name} (AUC {mt.compute(p, labels).roc_auc:.3f})")
    labels_roc = ("1 - specificity", "sensitivity", f"ROC: {title}")
    _finish_plot(plt, fig, ax, paths["roc"], *labels_roc, legend="lower right")
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, p in probabilities.items():
        mean_p, observed, _ = mt.reliability(p, labels)
        brier = mt.compute(p, labels).brier
        ax.plot(mean_p, observed, marker="o", label=f"{name} (Brier {brier:.3f})")
    xlabel, ylabel = "mean predicted P(mTICI >= 2c)", "observed fraction"
    labels_cal = (xlabel, ylabel, f"Calibration: {title}")
    _finish_plot(plt, fig, ax, paths["reliability"], *labels_cal, legend="upper left")
    return paths


def _finish_plot(
    plt: Any,
    fig: Any,
    ax: Any,
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    legend: str,
) -> None:
    """The diagonal, unit axes, labels, legend; save and close."""
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc=legend, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class Evaluation:
    """A checkpoint's result on a cohort."""

    name: str
    metrics: mt.Metrics
    probabilities: npt.NDArray[np.float64]
    slice_weights: npt.NDArray[np.float32]
    localisation: float | None  # share of cases whose top slice is within one of the clot

    def as_dict(self) -> dict[str, Any]:
        """Plain values."""
        return {
            "name": self.name,
            "metrics": self.metrics.as_dict(),
            "top_slice_within_one_of_clot": self.localisation,
        }


def localisation(
    slice_weights: npt.NDArray[np.floating], clot_slabs: npt.NDArray[np.integer]
) -> float | None:
    """Share of cases (with a known clot slab) whose highest-weighted slice is within one of it."""
    known = clot_slabs >= 0
    if not known.any():
        return None
    top = np.asarray(slice_weights)[known].argmax(axis=1)
    return float(np.mean(np.abs(top - clot_slabs[known]) <= 1))


def evaluate_checkpoints(
    checkpoints: Sequence[Path], cohort: Cohort, out_dir: Path, *, batch_size: int = 4
) -> tuple[list[Evaluation], str]:
    """Score each checkpoint on ``cohort`` at its card's threshold; write the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [_evaluate(path, cohort, batch_size) for path in checkpoints]
    text, oracle = _evaluation_text(results, cohort)
    (out_dir / "evaluation.md").write_text(text)
    (out_dir / "evaluation.json").write_text(
        json.dumps(
            {
                "cohort": str(cohort.root),
                "cases": len(cohort),
                "oracle_auc": oracle,
                "results": [r.as_dict() for r in results],
            },
            indent=2,
        )
    )
    _write_predictions(out_dir / "predictions.csv", results, cohort)
    plot_curves(
        {r.name: r.probabilities for r in results}, cohort.labels, out_dir, title=cohort.root.name
    )
    return results, text


def _evaluate(path: Path, cohort: Cohort, batch_size: int) -> Evaluation:
    """One checkpoint's predictions on ``cohort``, scored at its card's threshold."""
    from scanet_node.model.checkpoint import load_checkpoint

    model, card = load_checkpoint(path)
    if card.preprocessing.get("size") != cohort.size:
        raise ValueError(
            f"{path} takes {card.preprocessing.get('size')}-pixel inputs, the cohort was "
            f"loaded at {cohort.size}"
        )
    pred = predict(model, cohort.inputs, batch_size=batch_size)
    name = (
        METHOD_LABELS.get(card.architecture["kind"], card.architecture["kind"]) + f" ({path.name})"
    )
    loc = (
        localisation(pred.slice_weights, cohort.clot_slabs)
        if card.architecture["kind"] == "scanet"
        else None
    )
    return Evaluation(
        name,
        mt.compute(pred.probabilities, cohort.labels, card.threshold),
        pred.probabilities,
        pred.slice_weights,
        loc,
    )


def _evaluation_text(results: Sequence[Evaluation], cohort: Cohort) -> tuple[str, float | None]:
    """The held-out report (metrics table, oracle, localisation, left-out cases) and the
    cohort's oracle ROC-AUC."""
    text = mt.table(
        {r.name: [r.metrics] for r in results},
        f"Held-out evaluation on {len(cohort)} cases of {cohort.root.name} "
        "(each at its card's threshold)",
    )
    oracle = _oracle(cohort)
    if oracle is not None:
        text += f"\nOracle ROC-AUC of the cohort (true synthetic probabilities): {oracle:.3f}\n"
    for r in results:
        if r.localisation is not None:
            text += (
                f"\n{r.name}: highest-weighted slice within one slice of the clot in "
                f"{r.localisation:.0%} of cases\n"
            )
    if cohort.excluded:
        text += (
            f"\nLeft out ({len(cohort.excluded)}): "
            + "; ".join(f"{k}: {v}" for k, v in cohort.excluded.items())
            + "\n"
        )
    return text, oracle


def _write_predictions(path: Path, results: Sequence[Evaluation], cohort: Cohort) -> None:
    """One CSV row per case: its label, each checkpoint's probability, the first checkpoint's
    highest-weighted slice and the clot's slab."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "label", *(r.name for r in results), "top_slice", "clot_slab"])
        top = results[0].slice_weights.argmax(axis=1) if results else []
        for i, case in enumerate(cohort.case_ids):
            writer.writerow(
                [
                    case,
                    int(cohort.labels[i]),
                    *(round(float(r.probabilities[i]), 6) for r in results),
                    int(top[i]),
                    int(cohort.clot_slabs[i]),
                ]
            )


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    """Plain values."""
    return asdict(settings)


def train_final(
    cohort: Cohort,
    kind: str,
    settings: TrainSettings,
    out_path: Path,
    *,
    threshold: float,
    cv_summary: Mapping[str, Any] | None,
    data_description: str,
    synthetic: bool,
    command: str = "",
    progress: bool = True,
    init: Path | None = None,
) -> Path:
    """Train ``kind`` on the whole cohort (inner split for early stopping), save it and its card.

    ``init`` is a checkpoint of the same architecture to start from (fine-tuning; its weights'
    SHA-256 must be ``settings.init``); the card records where it came from.
    """
    from scanet_node.model.checkpoint import ModelCard, preprocessing, save_checkpoint

    started = time.perf_counter()
    arch = settings.architecture(kind, cohort.size)
    init_state, origin = _initial_state(init, arch, settings)
    inner_train, inner_val = inner_split(cohort.labels, settings.val_fraction, settings.seed)
    result = _fit_final(
        cohort, kind, arch, settings, out_path, inner_train, inner_val, progress, init_state
    )
    card = ModelCard(
        architecture={},
        preprocessing=preprocessing(cohort.size),
        training={
            "data": data_description,
            "cases": len(cohort),
            "positives": int(cohort.labels.sum()),
            "cases_fit": len(inner_train),
            "cases_early_stopping": len(inner_val),
            "settings": settings_dict(settings),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "history": result.history,
            "command": command,
            **({"initialised_from": origin} if origin else {}),
            # this run's time (a resumed run counts from its restart; the history has each
            # epoch's seconds)
            "seconds": round(time.perf_counter() - started, 1),
            "epoch_seconds": round(sum(h.get("seconds", 0.0) for h in result.history), 1),
            "machine": _machine(settings),
        },
        metrics={
            "early_stopping_auc": round(result.best_auc, 4),
            "cross_validation": dict(cv_summary or {}),
        },
        threshold=float(threshold),
        intended_use=_intended_use(synthetic),
        synthetic=synthetic,
    )
    card.reference = training_reference(
        result.model, cohort, batch_size=settings.batch_size, cpu_bf16=settings.cpu_bf16
    )
    save_checkpoint(out_path, result.model, card)
    out_path.with_name(f"state-final-{kind}.pt").unlink(missing_ok=True)
    return out_path


def _initial_state(
    init: Path | None, arch: Architecture, settings: TrainSettings
) -> tuple[Mapping[str, torch.Tensor] | None, dict[str, Any]]:
    """The weights to start from and the card's record of where they came from; (None, {})
    without ``init``. Raises ValueError when ``init`` is not what ``settings`` name."""
    from scanet_node.model.checkpoint import load_checkpoint

    if init is None:
        return None, {}
    start, start_card = load_checkpoint(init)
    if start_card.arch != arch:
        raise ValueError(f"{init} is a {start_card.arch}, not the {arch} these settings train")
    if start_card.weights_sha256 != settings.init:
        raise ValueError(f"{init}'s weights are not those settings.init names")
    origin: dict[str, Any] = {
        "checkpoint": init.name,
        "weights_sha256": start_card.weights_sha256,
        "data": start_card.training.get("data", ""),
        "command": start_card.training.get("command", ""),
        "cases": start_card.training.get("cases"),
        "epochs_run": start_card.training.get("epochs_run"),
        "seconds": start_card.training.get("seconds"),
    }
    return start.state_dict(), origin


def _fit_final(
    cohort: Cohort,
    kind: str,
    arch: Architecture,
    settings: TrainSettings,
    out_path: Path,
    inner_train: npt.NDArray[np.int64],
    inner_val: npt.NDArray[np.int64],
    progress: bool,
    init_state: Mapping[str, torch.Tensor] | None,
) -> FitResult:
    """Fit on ``inner_train``, early-stopping on ``inner_val``; resumable state and the
    learning curve lie next to ``out_path``."""
    return fit(
        arch,
        cohort.inputs[inner_train],
        cohort.labels[inner_train],
        cohort.inputs[inner_val],
        cohort.labels[inner_val],
        settings,
        train_soft=cohort.probabilities[inner_train],
        train_slabs=cohort.clot_slabs[inner_train],
        state_path=out_path.with_name(f"state-final-{kind}.pt"),
        curve_path=out_path.with_name(f"curve-{kind}.csv"),
        desc=f"final {kind}",
        progress=progress,
        init_state=init_state,
    )


def _machine(settings: TrainSettings) -> str:
    """What trained: CPU cores, architecture, torch version and threads."""
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), "
        f"torch {torch.__version__}, {settings.threads or torch.get_num_threads()} threads"
    )


def _intended_use(synthetic: bool) -> str:
    """The card's intended use: a demonstration on synthetic data, or research use."""
    return (
        "Demonstration of scanet-node on synthetic studies; NOT for clinical use"
        if synthetic
        else "Research use: prediction of recanalization (mTICI >= 2c) after thrombectomy"
    )


def training_reference(
    model: Any, cohort: Cohort, *, batch_size: int = 8, cpu_bf16: bool = False
) -> dict[str, Any]:
    """The cohort's descriptors and the trained model's predictions on it: the card's drift
    reference (``monitoring.drift``)."""
    from scanet_node.imaging.model_input import (
        MODEL_INPUT_CTA_WINDOW_HU,
        MODEL_INPUT_NCCT_WINDOW_HU,
    )
    from scanet_node.monitoring.reference import cohort_reference

    probabilities = predict(
        model, cohort.inputs, batch_size=batch_size, cpu_bf16=cpu_bf16
    ).probabilities
    return cohort_reference(
        cohort.inputs,
        cohort.descriptors,
        [float(p) for p in probabilities],
        ncct_window_hu=MODEL_INPUT_NCCT_WINDOW_HU,
        cta_window_hu=MODEL_INPUT_CTA_WINDOW_HU,
    )
