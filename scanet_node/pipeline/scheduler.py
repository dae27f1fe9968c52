"""The scheduler: APScheduler jobs for timed work (today: the series settle sweep)."""

from __future__ import annotations

import logging
from typing import Any

from scanet_node.catalog import Catalog, SettledSeries

logger = logging.getLogger(__name__)


def sweep_settled(catalog: Catalog, settle_seconds: float) -> list[SettledSeries]:
    """Mark settled the series quiet for ``settle_seconds`` and log one line per series."""
    settled = catalog.settle_series(settle_seconds)
    for s in settled:
        logger.info(
            "study %s: series %s settled (%s, %d instances)",
            s.study_instance_uid,
            s.series_instance_uid,
            s.modality,
            s.num_instances,
            extra={"study_uid": s.study_instance_uid, "series_uid": s.series_instance_uid},
        )
    return settled


class Scheduler:
    """Runs the periodic jobs of ``serve`` in a background thread.

    Parameters
    ----------
    catalog
        The catalog the jobs read and update.
    settle_seconds
        Quiet time after which a series counts as complete.
    sweep_seconds
        How often the settle sweep runs.
    """

    def __init__(self, catalog: Catalog, settle_seconds: float, sweep_seconds: float) -> None:
        self.catalog = catalog
        self.settle_seconds = settle_seconds
        self.sweep_seconds = sweep_seconds
        self._scheduler: Any = None

    def _sweep(self) -> None:
        try:
            sweep_settled(self.catalog, self.settle_seconds)
        except Exception:
            # A failed sweep is retried at the next tick; it never stops the node.
            logger.exception("settle sweep failed")

    def start(self) -> None:
        """Start the background scheduler."""
        from apscheduler.schedulers.background import BackgroundScheduler

        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(
            self._sweep,
            "interval",
            seconds=self.sweep_seconds,
            id="settle-sweep",
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stop, waiting for a sweep in progress to finish."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
