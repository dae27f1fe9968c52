"""The scheduler: APScheduler jobs for timed work, the settle sweep and the trigger.

Every tick (``PipelineSettings.settle_sweep_seconds``) it marks settled the series whose
sender is done with them (released, or moved on to another series) for the release grace, and
those quiet for the settle time, decides the role of each
newly settled series (imaging/classify.py: the header, the pixels only when the tags are
silent) and lets the trigger (pipeline/trigger.py) queue the jobs that the patient's series
now call for. A job queued here is picked up by a worker (pipeline/worker.py).

With ``[retention]`` given, it also purges old studies (pipeline/retention.py) every
``sweep_seconds``, and once shortly after start.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scanet_node.catalog import Catalog, SettledSeries, utcnow
from scanet_node.catalog.jobs import JobInfo, JobQueue
from scanet_node.catalog.models import Role
from scanet_node.catalog.store import SettleReason
from scanet_node.config import RetentionSettings
from scanet_node.imaging.classify import ClassificationRules
from scanet_node.pipeline.retention import run_retention
from scanet_node.pipeline.trigger import plan_jobs

#: The first retention sweep runs this long after start (or after ``sweep_seconds``, if less).
RETENTION_FIRST_DELAY_SECONDS = 5.0

logger = logging.getLogger(__name__)


def sweep_settled(
    catalog: Catalog, settle_seconds: float, release_grace_seconds: float | None = None
) -> list[SettledSeries]:
    """Mark settled the series quiet for ``settle_seconds`` or released by their sender
    ``release_grace_seconds`` ago; log one line per series."""
    settled = catalog.settle_series(settle_seconds, release_grace_seconds=release_grace_seconds)
    for s in settled:
        logger.info(
            "study %s: series %s settled (%s, %d instances, %s)",
            s.study_instance_uid,
            s.series_instance_uid,
            s.modality,
            s.num_instances,
            "sender done" if s.why == SettleReason.RELEASED else "quiet",
            extra={"study_uid": s.study_instance_uid, "series_uid": s.series_instance_uid},
        )
    return settled


def classify_settled(queue: JobQueue, spool_root: Path, rules: ClassificationRules) -> int:
    """Decide the role of every settled series that has none; return how many."""
    from scanet_node.imaging.classify_read import classify_files

    pending = queue.series_to_classify()
    for series in pending:
        role = classify_files([spool_root / p for p in series.paths], rules)
        queue.set_series_role(series.series_instance_uid, role.role, role.reason)
        logger.info(
            "study %s: series %s is %s",
            series.study_instance_uid,
            series.series_instance_uid,
            role.role.upper() if role.role != Role.OTHER else "not used",
            extra={"study_uid": series.study_instance_uid},
        )
    return len(pending)


def trigger(queue: JobQueue, pairing_window_seconds: float) -> list[JobInfo]:
    """Queue the jobs the settled series call for (pipeline/trigger.py); return the new ones."""
    decisions = plan_jobs(
        queue.candidates(),
        queue.latest_jobs(),
        utcnow(),
        timedelta(seconds=pairing_window_seconds),
    )
    created = []
    for decision in decisions:
        spec = decision.spec
        if decision.update_job_id is not None:
            if queue.update_queued_job(decision.update_job_id, spec):
                logger.info(
                    "study %s: queued job %d now uses %s",
                    spec.study_instance_uid,
                    decision.update_job_id,
                    spec.signature,
                    extra={"study_uid": spec.study_instance_uid},
                )
            continue
        job = queue.create_job(spec)
        if job is None:
            continue  # another scheduler queued the study's job first
        what = spec.missing or (
            f"amends job {spec.supersedes_id}" if spec.supersedes_id else "NCCT + CTA ready"
        )
        logger.info(
            "study %s: job %d queued (%s)",
            spec.study_instance_uid,
            job.id,
            what,
            extra={"study_uid": spec.study_instance_uid, "job_id": job.id},
        )
        created.append(job)
    return created


class Scheduler:
    """Runs the periodic work of ``serve`` in a background thread.

    Parameters
    ----------
    catalog
        The catalog the jobs read and update.
    settle_seconds
        Quiet time after which a series counts as complete.
    release_grace_seconds
        Time after its sender was done with a series (association released, or moved on)
        after which it counts as complete; ``None``: only the quiet time counts.
    sweep_seconds
        How often the sweep runs.
    spool_root, rules, pairing_window_seconds
        For the trigger; without ``spool_root`` the scheduler only settles series.
    retention, results_root
        ``[retention]`` and the results folder; with both (and ``spool_root``) old studies
        are purged.
    """

    def __init__(
        self,
        catalog: Catalog,
        settle_seconds: float,
        sweep_seconds: float,
        *,
        release_grace_seconds: float | None = None,
        spool_root: Path | None = None,
        rules: ClassificationRules | None = None,
        pairing_window_seconds: float = 3600.0,
        retention: RetentionSettings | None = None,
        results_root: Path | None = None,
    ) -> None:
        self.catalog = catalog
        self.settle_seconds = settle_seconds
        self.release_grace_seconds = release_grace_seconds
        self.sweep_seconds = sweep_seconds
        self.spool_root = spool_root
        self.rules = rules or ClassificationRules()
        self.pairing_window_seconds = pairing_window_seconds
        self.queue = JobQueue(catalog)
        self.retention = retention
        self.results_root = results_root
        # Held by a sweep, and by the purge of each group: no job is queued for a study
        # while its files are being deleted.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scheduler: Any = None

    def sweep(self) -> None:
        """One tick: settle, classify, trigger. Errors are logged; the next tick retries."""
        try:
            with self._lock:
                sweep_settled(self.catalog, self.settle_seconds, self.release_grace_seconds)
                if self.spool_root is not None:
                    classify_settled(self.queue, self.spool_root, self.rules)
                    trigger(self.queue, self.pairing_window_seconds)
        except Exception:
            # A failed sweep is retried at the next tick; it never stops the node.
            logger.exception("scheduler sweep failed")

    def retention_sweep(self) -> None:
        """Purge the studies retention says to (pipeline/retention.py); errors are logged."""
        if self.retention is None or self.spool_root is None or self.results_root is None:
            return
        try:
            run_retention(
                self.catalog,
                self.retention,
                self.spool_root,
                self.results_root,
                guard=self._lock,
                stop=self._stopping,
            )
        except Exception:
            # Retried at the next retention sweep; the listener and other sweeps go on.
            logger.exception("retention sweep failed")

    def start(self) -> None:
        """Start the background scheduler."""
        from apscheduler.schedulers.background import BackgroundScheduler

        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self.sweep_seconds,
            id="settle-sweep",
            max_instances=1,
            coalesce=True,
        )
        if self.retention is not None:
            first = min(RETENTION_FIRST_DELAY_SECONDS, self.retention.sweep_seconds)
            scheduler.add_job(
                self.retention_sweep,
                "interval",
                seconds=self.retention.sweep_seconds,
                id="retention-sweep",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC) + timedelta(seconds=first),
            )
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stop, waiting for a sweep in progress to finish."""
        self._stopping.set()  # a retention sweep in progress ends after its current study
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self._stopping.clear()
