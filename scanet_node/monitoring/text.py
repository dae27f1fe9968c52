"""``scanet-node performance``'s text: the monitoring report for a terminal."""

from __future__ import annotations

import math

from .report import MonitoringReport

_FIGURES = (
    ("prevalence", "prevalence mTICI >= 2c"),
    ("roc_auc", "ROC-AUC"),
    ("brier", "Brier score"),
    ("calibration_in_the_large", "calibration-in-the-large"),
    ("calibration_slope", "calibration slope"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
)


def _value(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def report_lines(report: MonitoringReport) -> list[str]:
    """The report as lines: figures beside the card's, per month, drift, warnings."""
    overall, card = report.performance.overall, report.performance.card
    since = f" since {report.since}" if report.since else ""
    lines = [
        f"{report.analysed} analysed studies{since}, {report.with_outcome} with an outcome "
        f"(threshold {overall.threshold:.4f})",
        f"{'':28}{'here':>22}{'model card':>22}",
    ]
    for name, label in _FIGURES:
        here = _value(getattr(overall, name))
        if name == "roc_auc" and not math.isnan(overall.roc_auc):
            here = f"{here} ({overall.roc_auc_low:.3f}-{overall.roc_auc_high:.3f})"
        lines.append(f"{label:28}{here:>22}{_value(card.get(name)):>22}")
    if report.performance.months:
        lines.append("per month: outcomes, ROC-AUC, Brier")
        for month, f in sorted(report.performance.months.items()):
            lines.append(f"  {month}  {f.n:5}  {_value(f.roc_auc):>7}  {_value(f.brier):>7}")
    lines.append(f"drift over the last {report.drift_days} days ({report.drift_studies} studies):")
    for d in report.drift:
        lines.append(f"  {d.name:28} PSI {_value(d.psi):>7}  {d.state} (n {d.n})")
    if not report.drift:
        lines.append("  no reference in the model card")
    lines += [f"WARNING {w}" for w in report.warnings] or ["no warning"]
    return lines
