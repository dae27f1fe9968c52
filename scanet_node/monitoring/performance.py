"""How well the model does here: its predictions against the outcomes the site recorded.

Pure functions of (probability, outcome, month) triples, so that ``scanet-node performance``,
the admin page and the Prometheus gauges report the same figures, computed by the same code
as the model card's (``model.metrics``).

Calibration follows Van Calster et al. (J Clin Epidemiol 2016, "A calibration hierarchy"):
*calibration-in-the-large* is the intercept of a logistic model of the outcome with the
prediction's logit as an offset (0 is ideal: negative when the model predicts too high), the
*calibration slope* is the coefficient of the logit in a logistic model of the outcome (1 is
ideal: below 1 when predictions are too extreme).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..model import metrics

#: Fewer outcomes than this in a month give its count and prevalence, not its figures.
MIN_FOR_FIGURES = 10
_CLIP = 1e-6


@dataclass(frozen=True)
class Observed:
    """One analysed study with a recorded outcome."""

    probability: float
    positive: bool
    #: The CT's month, ``YYYY-MM`` (no finer date is kept once the study is purged).
    month: str


@dataclass(frozen=True)
class Figures:
    """The performance figures over a set of studies; ``nan`` where undefined."""

    n: int
    positives: int
    prevalence: float
    roc_auc: float
    roc_auc_low: float
    roc_auc_high: float
    brier: float
    calibration_in_the_large: float
    calibration_slope: float
    sensitivity: float
    specificity: float
    threshold: float


@dataclass(frozen=True)
class Performance:
    """The figures overall and per month, beside the model card's, with the plots' points."""

    overall: Figures
    months: dict[str, Figures]
    card: dict[str, float]
    roc: dict[str, list[float]] = field(default_factory=dict)
    reliability: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON (``nan`` becomes ``None``)."""
        plain: dict[str, Any] = plain_values(asdict(self))
        return plain


def plain_values(value: Any) -> Any:
    """``value`` with every ``nan`` float, however deep in dicts and lists, as ``None``."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_values(v) for v in value]
    return value


def _logit(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    q = np.clip(p, _CLIP, 1 - _CLIP)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


def _logistic_fit(
    x: npt.NDArray[np.float64] | None, y: npt.NDArray[np.float64], offset: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Maximum-likelihood coefficients (intercept first) by Newton-Raphson."""
    design = np.ones((len(y), 1)) if x is None else np.column_stack([np.ones(len(y)), x])
    beta = np.zeros(design.shape[1])
    for _ in range(50):
        mu = 1 / (1 + np.exp(-(design @ beta + offset)))
        weights = mu * (1 - mu)
        hessian = design.T @ (design * weights[:, None])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(beta)), design.T @ (y - mu))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta


def calibration(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Calibration-in-the-large and calibration slope (``nan`` with one class only)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(np.float64)
    if len(y) == 0 or y.all() or not y.any():
        return math.nan, math.nan
    lp = _logit(p)
    try:
        intercept = float(_logistic_fit(None, y, lp)[0])
        slope = float(_logistic_fit(lp, y, np.zeros_like(lp))[1])
    except np.linalg.LinAlgError:
        return math.nan, math.nan
    return intercept, slope


def figures(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    threshold: float,
    resamples: int = 2000,
) -> Figures:
    """The figures of one set of studies; the ROC-AUC's 95 % interval by percentile bootstrap."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    n, positives = len(y), int(y.sum())
    prevalence = positives / n if n else math.nan
    if n < MIN_FOR_FIGURES or positives in (0, n):
        nan = math.nan
        return Figures(n, positives, prevalence, nan, nan, nan, nan, nan, nan, nan, nan, threshold)
    m = metrics.compute(p, y, threshold)
    low, high = metrics.bootstrap_auc_interval(p, y, resamples=resamples)
    citl, slope = calibration(p, y)
    return Figures(
        n=n,
        positives=positives,
        prevalence=prevalence,
        roc_auc=m.roc_auc,
        roc_auc_low=low,
        roc_auc_high=high,
        brier=m.brier,
        calibration_in_the_large=citl,
        calibration_slope=slope,
        sensitivity=m.sensitivity,
        specificity=m.specificity,
        threshold=threshold,
    )


def performance(
    observed: Sequence[Observed],
    *,
    threshold: float,
    card: Mapping[str, float],
    resamples: int = 2000,
) -> Performance:
    """The figures overall and per month, the ROC curve and the reliability curve."""
    p = np.asarray([o.probability for o in observed], dtype=np.float64)
    y = np.asarray([o.positive for o in observed], dtype=bool)
    months: dict[str, Figures] = {}
    for month in sorted({o.month for o in observed}):
        mask = np.asarray([o.month == month for o in observed])
        months[month] = figures(p[mask], y[mask], threshold=threshold, resamples=resamples)
    overall = figures(p, y, threshold=threshold, resamples=resamples)
    roc: dict[str, list[float]] = {}
    curve: dict[str, list[float]] = {}
    if len(y) and 0 < y.sum() < len(y):
        fpr, tpr = metrics.roc_curve(p, y)
        roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        mean_p, freq, counts = metrics.reliability(p, y)
        curve = {"predicted": mean_p.tolist(), "observed": freq.tolist(), "count": counts.tolist()}
    return Performance(overall, months, dict(card), roc, curve)
