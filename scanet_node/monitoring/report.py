"""The monitoring report: performance against recorded outcomes, input drift, and warnings.

One pure function of the catalog's monitoring records, the model card and the clock, so that
``scanet-node performance``, the admin page, ``/metrics`` and ``/healthz`` say the same thing.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from .drift import DESCRIPTORS, PSI_WARN, DescriptorDrift, drift_report
from .outcomes import POSITIVE_GRADES
from .performance import Observed, Performance, performance, plain_values

#: Drift compares the studies analysed in this many last days with the training reference.
DRIFT_DAYS = 30
#: The model card's figures compared with the local ones (card key -> local figure's name).
CARD_FIGURES = (
    "roc_auc",
    "brier",
    "sensitivity",
    "specificity",
    "prevalence",
    "calibration_in_the_large",
    "calibration_slope",
)


@dataclass(frozen=True)
class Record:
    """What the catalog keeps of one analysed study for monitoring (no UID, no patient)."""

    #: When it was analysed (naive UTC); the first of its month once the study was purged.
    analysed_at: datetime
    #: True once the study was purged: ``analysed_at`` then only says the month.
    month_only: bool
    probability: float
    #: The final mTICI grade, once imported (``outcomes import``).
    grade: str | None
    descriptors: Mapping[str, Any]

    @property
    def month(self) -> str:
        """``YYYY-MM``."""
        return f"{self.analysed_at.year:04d}-{self.analysed_at.month:02d}"

    def since(self, start: datetime) -> bool:
        """Analysed at or after ``start`` (a purged study: any time in its month)."""
        if not self.month_only:
            return self.analysed_at >= start
        last = calendar.monthrange(self.analysed_at.year, self.analysed_at.month)[1]
        return self.analysed_at.replace(day=last, hour=23, minute=59, second=59) >= start


@dataclass(frozen=True)
class MonitoringReport:
    """Everything the monitoring shows."""

    analysed: int
    with_outcome: int
    since: str | None
    performance: Performance
    drift_days: int
    drift_studies: int
    drift: list[DescriptorDrift]
    #: Lines for ``/healthz``'s body and the admin page; empty when nothing is wrong.
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON (``nan`` becomes ``None``)."""
        plain: dict[str, Any] = plain_values(asdict(self))
        return plain


def card_figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The card's held-out figures that the local ones are compared with."""
    held_out = metrics.get("held_out", {})
    if not isinstance(held_out, Mapping):
        return {}
    found = {
        k: float(held_out[k]) for k in CARD_FIGURES if isinstance(held_out.get(k), int | float)
    }
    ci = held_out.get("roc_auc_ci95")
    if isinstance(ci, Sequence) and len(ci) == 2:
        found["roc_auc_low"], found["roc_auc_high"] = float(ci[0]), float(ci[1])
    return found


def build_report(
    records: Sequence[Record],
    *,
    threshold: float,
    card: Mapping[str, float],
    reference: Mapping[str, Any],
    now: datetime,
    since: date | None = None,
    resamples: int = 2000,
) -> MonitoringReport:
    """Performance over the records with an outcome (from ``since``), drift over the last days.

    Warnings: each descriptor whose PSI is above :data:`drift.PSI_WARN`, and the local
    ROC-AUC when even its 95 % interval's upper bound is below the card's figure.
    """
    start = datetime.combine(since, datetime.min.time()) if since else None
    chosen = [r for r in records if start is None or r.since(start)]
    observed = [
        Observed(r.probability, r.grade in POSITIVE_GRADES, r.month)
        for r in chosen
        if r.grade is not None
    ]
    figures = performance(observed, threshold=threshold, card=card, resamples=resamples)
    window = [r for r in records if r.since(now - timedelta(days=DRIFT_DAYS))]
    recent = {name: [r.descriptors.get(name) for r in window] for name in DESCRIPTORS}
    recent["probability"] = [r.probability for r in window]
    drift = drift_report(reference, recent)
    warnings = [
        f"drift: {d.name} PSI {d.psi:.2f} over the last {DRIFT_DAYS} days "
        f"({d.n} studies) is above {PSI_WARN:.2f}"
        for d in drift
        if d.state == "drifted"
    ]
    local, expected = figures.overall, card.get("roc_auc")
    if (
        expected is not None
        and not math.isnan(local.roc_auc_high)
        and local.roc_auc_high < expected
    ):
        warnings.append(
            f"performance: local ROC-AUC {local.roc_auc:.2f} (95 % CI {local.roc_auc_low:.2f}-"
            f"{local.roc_auc_high:.2f}, {local.n} outcomes) is below the model card's "
            f"{expected:.2f}"
        )
    return MonitoringReport(
        analysed=len(chosen),
        with_outcome=len(observed),
        since=since.isoformat() if since else None,
        performance=figures,
        drift_days=DRIFT_DAYS,
        drift_studies=len(window),
        drift=drift,
        warnings=warnings,
    )
