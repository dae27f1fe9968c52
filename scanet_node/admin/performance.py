"""``/performance``: the model's local performance against recorded outcomes, and input drift.

The figures are those of ``scanet-node performance --json`` (one :class:`MonitoringReport`,
``monitoring.report``), each beside the model card's; the ROC and reliability plots are PNGs
made on request from the same report.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scanet_node.admin.render import Html, fields, join, muted, render, span, table
from scanet_node.monitoring.drift import DESCRIPTORS, PSI_MODERATE, PSI_WARN

if TYPE_CHECKING:
    from scanet_node.monitoring.performance import Figures
    from scanet_node.monitoring.report import MonitoringReport

#: The figures shown, with their labels, in order.
FIGURES = (
    ("n", "Studies with an outcome"),
    ("prevalence", "Prevalence of mTICI >= 2c"),
    ("roc_auc", "ROC-AUC (95 % CI)"),
    ("brier", "Brier score"),
    ("calibration_in_the_large", "Calibration-in-the-large (0 ideal)"),
    ("calibration_slope", "Calibration slope (1 ideal)"),
    ("sensitivity", "Sensitivity at the threshold"),
    ("specificity", "Specificity at the threshold"),
)


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _figure(figures: Figures, name: str) -> str:
    if name == "n":
        return str(figures.n)
    if name == "roc_auc" and not math.isnan(figures.roc_auc):
        return f"{figures.roc_auc:.3f} ({figures.roc_auc_low:.3f}-{figures.roc_auc_high:.3f})"
    return _number(getattr(figures, name))


def _card_figure(card: dict[str, float], name: str) -> str:
    if name == "roc_auc" and "roc_auc" in card and "roc_auc_low" in card:
        return f"{card['roc_auc']:.3f} ({card['roc_auc_low']:.3f}-{card['roc_auc_high']:.3f})"
    return _number(card.get(name))


def figures_table(report: MonitoringReport) -> Html:
    """Each local figure beside the model card's."""
    overall, card = report.performance.overall, report.performance.card
    return table(
        ["", "Here", "Model card (held-out)"],
        ([label, _figure(overall, name), _card_figure(card, name)] for name, label in FIGURES),
    )


def months_table(report: MonitoringReport) -> Html:
    """The figures per month of analysis."""
    return table(
        [
            "Month",
            "Outcomes",
            "Prevalence",
            "ROC-AUC (95 % CI)",
            "Brier",
            "Sensitivity",
            "Specificity",
        ],
        (
            [
                month,
                f.n,
                _number(f.prevalence, 2),
                _figure(f, "roc_auc"),
                _number(f.brier),
                _number(f.sensitivity, 2),
                _number(f.specificity, 2),
            ]
            for month, f in sorted(report.performance.months.items(), reverse=True)
        ),
        empty="no outcome imported yet (scanet-node outcomes import FILE.csv)",
    )


def drift_table(report: MonitoringReport) -> Html:
    """Each descriptor's population stability index over the last days."""
    states = {"drifted": "bad", "stable": "ok"}
    return table(
        ["Descriptor", "Studies", "Median here", "PSI", "State"],
        (
            [
                d.name + (f" ({DESCRIPTORS[d.name]})" if DESCRIPTORS.get(d.name) else ""),
                d.n,
                _number(d.recent_median, 2),
                _number(d.psi, 3),
                span(states.get(d.state, "muted"), d.state),
            ]
            for d in report.drift
        ),
        empty="the model card has no drift reference (trained before drift monitoring)",
    )


def performance_body(report: MonitoringReport, roc_src: str, reliability_src: str) -> Html:
    """The whole page's body."""
    overall = report.performance.overall
    warnings = (
        join((span("bad", w) for w in report.warnings), separator="\n")
        if report.warnings
        else span("ok", "none")
    )
    return render(
        "performance.html",
        summary=fields(
            [
                ("Analysed studies", report.analysed),
                ("With an outcome", report.with_outcome),
                ("Threshold", _number(overall.threshold, 4)),
                ("Warnings", warnings),
            ]
        ),
        figures=figures_table(report),
        months=months_table(report),
        roc_src=roc_src,
        reliability_src=reliability_src,
        drift_days=report.drift_days,
        drift_studies=report.drift_studies,
        drift=drift_table(report),
        psi_moderate=PSI_MODERATE,
        psi_warn=PSI_WARN,
        note=muted(
            "Outcomes are the final mTICI grades imported from the stroke registry; a study "
            "counts once, with its latest analysis. Figures need 10 outcomes of both classes."
        ),
    )
