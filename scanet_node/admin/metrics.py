"""``/metrics``: the node's figures in the Prometheus text format.

A custom collector on its own registry (never prometheus_client's global one) builds every
family at scrape time. The listener's figures (instances received, associations) are this
``serve`` process's counters since it started. Everything about jobs comes from the catalog,
because workers run in other processes or on other machines; totals add the studies that
retention has purged (``purge_audit``), so they do not go backwards when rows are deleted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from scanet_node.catalog.models import DeliveryStatus
from scanet_node.catalog.overview import MetricFigures
from scanet_node.dicom_status import Status, label

if TYPE_CHECKING:
    from scanet_node.monitoring.report import MonitoringReport

#: Upper bounds (seconds) of the turnaround histogram: last input received -> delivered.
TURNAROUND_BUCKETS = (10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0)
#: The media type of :func:`exposition`'s text (prometheus_client's text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The failure reason label is the reason's first part, at most this long.
REASON_LABEL_CHARS = 40
PURGED_REASON = "(purged)"


def reason_category(reason: str) -> str:
    """A bounded label for a failure reason: the text before its first ':', cut short.

    Workers write ``"ExceptionName: message"`` or ``"no model to run: ..."``, so this keeps
    the kind of failure and drops the details (paths, UIDs) that would make labels unbounded.
    """
    head = reason.split(":", 1)[0].strip()
    return head[:REASON_LABEL_CHARS] or "unknown"


@dataclass(frozen=True)
class ProcessFigures:
    """What the ``serve`` process itself knows: listener counters and the disk."""

    #: C-STOREs by (outcome, status): stored / duplicate / refused.
    instances: dict[tuple[str, str], int]
    #: Associations by outcome: released / aborted / closed / rejected.
    associations: dict[str, int]
    disk_free_bytes: int
    min_free_bytes: int
    results_bytes: int


class NodeCollector(Collector):
    """Builds the metric families from two sources read at every scrape.

    Parameters
    ----------
    process
        Returns the serve process's own figures.
    catalog
        Returns the catalog's figures (one read transaction).
    """

    def __init__(
        self,
        process: Callable[[], ProcessFigures],
        catalog: Callable[[], MetricFigures],
    ) -> None:
        self._process = process
        self._catalog = catalog

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe ahead: registering must not query the catalog."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Every family, from fresh figures."""
        own = self._process()
        figures = self._catalog()
        yield from _listener_families(own)
        yield from _outcome_families(figures)
        yield _histogram(
            "scanet_turnaround_seconds",
            "Last input instance received -> results acknowledged by every destination "
            "(or job finished, without destinations), jobs in the catalog.",
            figures.turnarounds,
            TURNAROUND_BUCKETS,
        )
        yield from _backlog_families(figures)
        yield from _storage_families(own, figures)


def _listener_families(own: ProcessFigures) -> Iterable[Metric]:
    """This serve process's counters: instances received and associations ended."""
    instances = CounterMetricFamily(
        "scanet_instances_received",
        "C-STORE requests answered by this serve process since it started, by outcome "
        "(stored, duplicate: same SOP Instance UID again, refused) and DICOM status.",
        labels=["outcome", "status"],
    )
    for outcome in ("stored", "duplicate"):
        success = label(Status.SUCCESS)
        instances.add_metric([outcome, success], own.instances.get((outcome, success), 0))
    for (outcome, status), n in sorted(own.instances.items()):
        if outcome == "refused":
            instances.add_metric([outcome, status], n)
    yield instances

    associations = CounterMetricFamily(
        "scanet_associations",
        "Associations ended since this serve process started, by outcome.",
        labels=["outcome"],
    )
    for outcome in sorted({"released", "aborted", "closed", "rejected", *own.associations}):
        associations.add_metric([outcome], own.associations.get(outcome, 0))
    yield associations


def _outcome_families(figures: MetricFigures) -> Iterable[Metric]:
    """The catalog's totals of finished work: studies analysed and jobs failed for good."""
    studies = CounterMetricFamily(
        "scanet_studies_analysed",
        "Studies whose analysis finished, by the outcome of their newest job "
        "(purged studies included).",
        labels=["outcome"],
    )
    for outcome, n in sorted(figures.studies_analysed.items()):
        studies.add_metric([outcome], n)
    yield studies

    job_failures = CounterMetricFamily(
        "scanet_job_failures",
        "Jobs failed for good, by reason category (the reason's text before ':'); "
        f"purged studies count under {PURGED_REASON!r}.",
        labels=["reason"],
    )
    for reason, n in sorted(_failures_by_category(figures).items()):
        job_failures.add_metric([reason], n)
    yield job_failures


def _failures_by_category(figures: MetricFigures) -> dict[str, int]:
    """Failed jobs summed by :func:`reason_category`, purged studies under PURGED_REASON."""
    failures: dict[str, int] = {}
    for reason, n in figures.job_failures.items():
        key = reason_category(reason)
        failures[key] = failures.get(key, 0) + n
    if figures.purged_failures:
        failures[PURGED_REASON] = failures.get(PURGED_REASON, 0) + figures.purged_failures
    return failures


def _backlog_families(figures: MetricFigures) -> Iterable[Metric]:
    """The catalog's current state: queue depths, jobs and deliveries by status."""
    depth = GaugeMetricFamily(
        "scanet_queue_depth",
        "Jobs queued and deliveries pending.",
        labels=["queue"],
    )
    depth.add_metric(["jobs"], figures.queued_jobs)
    depth.add_metric(["deliveries"], figures.pending_deliveries)
    yield depth

    jobs = GaugeMetricFamily("scanet_jobs", "Jobs in the catalog by status.", labels=["status"])
    for status, n in sorted(figures.jobs.items()):
        jobs.add_metric([status], n)
    yield jobs

    deliveries = GaugeMetricFamily(
        "scanet_deliveries", "Deliveries in the catalog by status.", labels=["status"]
    )
    for status in sorted({*(s.value for s in DeliveryStatus), *figures.deliveries}):
        deliveries.add_metric([status], figures.deliveries.get(status, 0))
    yield deliveries


def _storage_families(own: ProcessFigures, figures: MetricFigures) -> Iterable[Metric]:
    """Disk space: free, the refusal threshold, the spool's and the results' bytes."""
    yield GaugeMetricFamily(
        "scanet_disk_free_bytes",
        "Free space on the spool's file system.",
        value=own.disk_free_bytes,
    )
    yield GaugeMetricFamily(
        "scanet_disk_min_free_bytes",
        "[node] min_free_disk_mb: below this free space new instances are refused.",
        value=own.min_free_bytes,
    )
    yield GaugeMetricFamily(
        "scanet_spool_bytes",
        "Bytes of the instances filed in the spool.",
        value=figures.spool_bytes,
    )
    yield GaugeMetricFamily(
        "scanet_results_bytes",
        "Bytes of the results folder (SR, images, PNGs of every job).",
        value=own.results_bytes,
    )


def _histogram(
    name: str, documentation: str, values: list[float], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    ordered = sorted(values)
    buckets: list[tuple[str, float]] = [
        (str(float(b)), float(bisect.bisect_right(ordered, b))) for b in bounds
    ]
    buckets.append(("+Inf", float(len(ordered))))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum(ordered))


class MonitoringCollector(Collector):
    """The monitoring report's figures: local performance, drift, warnings (issue 18).

    ``nan`` where a figure is undefined (too few outcomes), as Prometheus expects.
    """

    #: Report figure -> metric name suffix, help.
    FIGURES = (
        ("n", "outcomes", "Analysed studies with an imported outcome."),
        ("prevalence", "prevalence", "Share of outcomes with mTICI >= 2c."),
        ("roc_auc", "roc_auc", "ROC-AUC of the predictions against the outcomes."),
        ("roc_auc_low", "roc_auc_low", "Lower bound of the ROC-AUC's 95 % bootstrap interval."),
        ("roc_auc_high", "roc_auc_high", "Upper bound of the ROC-AUC's 95 % bootstrap interval."),
        ("brier", "brier", "Brier score of the predictions against the outcomes."),
        (
            "calibration_in_the_large",
            "calibration_in_the_large",
            "Logistic intercept with the prediction's logit as offset (0 is ideal).",
        ),
        ("calibration_slope", "calibration_slope", "Logistic slope on the logit (1 is ideal)."),
        ("sensitivity", "sensitivity", "Sensitivity at the model's threshold."),
        ("specificity", "specificity", "Specificity at the model's threshold."),
    )

    def __init__(self, report: Callable[[], MonitoringReport]) -> None:
        self._report = report

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe ahead: registering must not build the report."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The figures of the (cached) report; nothing when it cannot be built."""
        try:
            report = self._report()
        except Exception:
            return
        overall, card = report.performance.overall, report.performance.card
        for name, suffix, documentation in self.FIGURES:
            gauge = GaugeMetricFamily(
                f"scanet_monitoring_{suffix}", documentation, labels=["source"]
            )
            gauge.add_metric(["local"], float(getattr(overall, name)))
            if name in card:
                gauge.add_metric(["model_card"], float(card[name]))
            yield gauge
        psi = GaugeMetricFamily(
            "scanet_monitoring_drift_psi",
            f"Population stability index of each input descriptor over the last "
            f"{report.drift_days} days against the training cohort (nan: too few studies).",
            labels=["descriptor"],
        )
        for d in report.drift:
            psi.add_metric([d.name], d.psi)
        yield psi
        yield GaugeMetricFamily(
            "scanet_monitoring_warnings",
            "Monitoring warnings (drifted descriptors, local ROC-AUC below the card's).",
            value=len(report.warnings),
        )


def build_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry holding just ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (media type :data:`CONTENT_TYPE`)."""
    return generate_latest(registry)
