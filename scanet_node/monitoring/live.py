"""The monitoring report of a running node: the catalog's rows, the model card, the clock."""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from scanet_node.catalog.monitoring import MonitoringStore
from scanet_node.catalog.store import utcnow
from scanet_node.errors import CheckpointError
from scanet_node.model.card_file import read_card_values

from .report import MonitoringReport, build_report, card_figures

logger = logging.getLogger(__name__)

#: Seconds a report is reused by the admin page, ``/metrics`` and ``/healthz``.
REPORT_TTL_SECONDS = 60.0


class Monitor:
    """Builds :class:`MonitoringReport` from the catalog and the checkpoint's card.

    The card is read once, without torch (``model.card_file``). The report of all studies is
    kept for :data:`REPORT_TTL_SECONDS`: its bootstrap interval costs a fraction of a second
    per thousand outcomes, too much for every scrape.
    """

    def __init__(self, store: MonitoringStore, checkpoint: Path, *, resamples: int = 2000) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.resamples = resamples
        self._card: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._cached: tuple[float, MonitoringReport] | None = None

    def card(self) -> dict[str, Any]:
        """The checkpoint's card as plain values (read once); empty when it cannot be read
        (no model: the workers say so; the report then has no card figures to compare)."""
        if self._card is None:
            try:
                self._card = read_card_values(self.checkpoint)
            except CheckpointError as exc:
                logger.warning("monitoring: %s", exc)
                self._card = {}
        return self._card

    def report(self, since: date | None = None, *, fresh: bool = False) -> MonitoringReport:
        """The report over every study (from ``since``), cached when ``since`` is None."""
        with self._lock:
            if since is None and not fresh and self._cached is not None:
                at, cached = self._cached
                if time.monotonic() - at < REPORT_TTL_SECONDS:
                    return cached
            card = self.card()
            report = build_report(
                self.store.records(),
                threshold=float(card.get("threshold", 0.5)),
                card=card_figures(card.get("metrics", {})),
                reference=card.get("reference") or {},
                now=utcnow(),
                since=since,
                resamples=self.resamples,
            )
            if since is None:
                self._cached = (time.monotonic(), report)
            return report
