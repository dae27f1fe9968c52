"""The paper's five metrics, calibration, and the Table-1-style report.

Plain numpy, so that they can be checked against scikit-learn on fixed numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
METRIC_NAMES = ("roc_auc", "accuracy", "precision", "sensitivity", "specificity", "brier")


@dataclass(frozen=True)
class Metrics:
    """Binary classification metrics at one threshold; ``nan`` where undefined."""

    roc_auc: float
    accuracy: float
    precision: float
    sensitivity: float
    specificity: float
    brier: float
    n: int
    positives: int
    threshold: float

    def as_dict(self) -> dict[str, float]:
        """Plain values, rounded to 4 places."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney statistic, ties counted half."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError("ROC-AUC needs both classes")
    order = np.argsort(np.concatenate([positives, negatives]), kind="mergesort")
    ranks = np.empty(len(order), dtype=float)
    ranks[order] = np.arange(1, len(order) + 1)
    # average ranks of ties
    values = np.concatenate([positives, negatives])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    rank_sum = ranks[: len(positives)].sum()
    u = rank_sum - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def bootstrap_auc_interval(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC-AUC (cases resampled with replacement).

    Resamples with one class only are drawn again; the seed makes the interval reproducible.
    The resamples are drawn and scored a block at a time (:func:`_resampled_aucs`): the same
    draws and values as one :func:`roc_auc` per resample, many times faster.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("ROC-AUC needs both classes")
    rng = np.random.default_rng(seed)
    n = len(s)
    block = max(1, min(resamples, _BOOTSTRAP_CELLS // n))
    values: list[float] = []
    while len(values) < resamples:
        idx = rng.integers(0, n, (min(block, resamples - len(values)), n))
        positives = y[idx].sum(axis=1)
        both = (positives > 0) & (positives < n)
        values.extend(_resampled_aucs(s, y, idx[both]).tolist())
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


#: Resamples x cases scored at once by the bootstrap (8 bytes each: 16 MB).
_BOOTSTRAP_CELLS = 2_000_000


def _resampled_aucs(
    s: FloatArray, y: npt.NDArray[np.bool_], idx: npt.NDArray[np.int64]
) -> FloatArray:
    """The ROC-AUC of each row of ``idx`` (indices of resampled cases), ties counted half.

    Each resample is a count per case; over the cases sorted by score, grouped by equal
    score, a positive beats the negatives of the groups below it and ties half of its own.
    """
    order = np.argsort(s, kind="mergesort")
    starts = np.r_[0, np.nonzero(np.diff(s[order]))[0] + 1]
    position = np.empty(len(s), dtype=np.int64)
    position[order] = np.arange(len(s))
    counts = np.zeros(idx.shape)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    np.add.at(counts, (rows, position[idx.ravel()]), 1.0)
    positive = y[order]
    pos = np.add.reduceat(counts * positive, starts, axis=1)
    neg = np.add.reduceat(counts * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return np.asarray(wins / (pos.sum(axis=1) * neg.sum(axis=1)), dtype=np.float64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def compute(probabilities: npt.ArrayLike, labels: npt.ArrayLike, threshold: float = 0.5) -> Metrics:
    """ROC-AUC, accuracy, precision, sensitivity, specificity (class 1 at ``p >= threshold``)."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels).astype(int)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"probabilities {p.shape} and labels {y.shape} must be equal 1-D arrays")
    predicted = p >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    tn = int(np.sum(~predicted & (y == 0)))
    fp = int(np.sum(predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    auc = roc_auc(p, y) if 0 < y.sum() < len(y) else float("nan")
    return Metrics(
        roc_auc=auc,
        accuracy=_ratio(tp + tn, len(y)),
        precision=_ratio(tp, tp + fp),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        brier=float(np.mean((p - y) ** 2)) if len(y) else float("nan"),
        n=len(y),
        positives=int(y.sum()),
        threshold=float(threshold),
    )


def roc_curve(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels).astype(int)
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, len(y) - y.sum())]
    return fpr, tpr


def reliability(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 10
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Mean predicted probability, observed frequency and count per equal-width bin.

    Bins are ``[0, 1/bins], (1/bins, 2/bins], ...`` (scikit-learn's convention); empty bins are
    left out.
    """
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], p, side="left")
    counts = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, weights=p, minlength=bins)
    observed = np.bincount(which, weights=y, minlength=bins)
    keep = counts > 0
    return (
        mean_p[keep] / counts[keep],
        observed[keep] / counts[keep],
        counts[keep].astype(np.int64),
    )


def youden_threshold(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The threshold that maximises sensitivity + specificity - 1."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels).astype(int)
    best, best_j = 0.5, -1.0
    for t in np.unique(p):
        m = compute(p, y, float(t))
        j = m.sensitivity + m.specificity - 1.0
        if j > best_j:
            best, best_j = float(t), j
    return best


def final_threshold(
    cv_probabilities: npt.ArrayLike | None, labels: npt.ArrayLike, default: float = 0.5
) -> float:
    """The decision threshold a final model's card records.

    Youden's point (:func:`youden_threshold`) of the cross-validated probabilities of the
    cohort's ``labels``; ``default`` when there was no cross-validation (``None``).
    """
    if cv_probabilities is None:
        return default
    return youden_threshold(cv_probabilities, labels)


def summarise(per_fold: Sequence[Metrics]) -> dict[str, tuple[float, float]]:
    """Mean and (sample) standard deviation of each metric over folds."""
    out = {}
    for name in METRIC_NAMES:
        values = np.array([getattr(m, name) for m in per_fold], dtype=float)
        defined = values[np.isfinite(values)]
        mean = float(defined.mean()) if len(defined) else float("nan")
        std = float(defined.std(ddof=1)) if len(defined) > 1 else 0.0
        out[name] = (mean, std)
    return out


def table(rows: Mapping[str, Sequence[Metrics]], title: str = "") -> str:
    """A Markdown table shaped like the paper's Table 1: one row per method, mean +- std."""
    header = "| Method | ROC-AUC | Accuracy | Precision | Sensitivity | Specificity | Brier |"
    lines = [title, ""] if title else []
    lines += [header, "|---" * 7 + "|"]
    for method, folds in rows.items():
        summary = summarise(folds)
        cells = []
        for name in METRIC_NAMES:
            mean, std = summary[name]
            if not np.isfinite(mean):
                cells.append("n/a")  # e.g. precision when no fold predicted a positive
            else:
                cells.append(f"{mean:.3f} ± {std:.3f}" if len(folds) > 1 else f"{mean:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
