"""The ``serve`` process: wires the catalog, the spool, the listener and the scheduler."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from scanet_node.catalog import Catalog
from scanet_node.config import Settings
from scanet_node.ingest.handlers import StoreService
from scanet_node.ingest.server import Listener
from scanet_node.ingest.spool import Spool
from scanet_node.pipeline.scheduler import Scheduler

logger = logging.getLogger(__name__)


class Node:
    """A running node: listener, catalog, spool and scheduler, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.catalog_url)
        self.spool = Spool(settings.node.spool_dir, settings.node.min_free_disk_mb * 1024 * 1024)
        self.listener = Listener(settings, StoreService(self.catalog, self.spool))
        self.scheduler = Scheduler(
            self.catalog,
            settings.pipeline.series_settle_seconds,
            settings.pipeline.settle_sweep_seconds,
        )

    def start(self) -> tuple[str, int]:
        """Start everything; return the listener's bound address."""
        removed = self.spool.remove_partial_files()
        if removed:
            logger.warning("removed %d partial file(s) left by an earlier stop", removed)
        try:
            address = self.listener.start()
        except Exception:
            self.catalog.close()
            raise
        self.scheduler.start()
        return address

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let open associations finish, stop the scheduler, close the catalog."""
        self.listener.stop(grace_seconds)
        self.scheduler.stop()
        self.catalog.close()


def serve(settings: Settings, *, announce: bool = True) -> None:
    """Run the node until SIGTERM or SIGINT, then stop cleanly."""
    node = Node(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    host, port = node.start()
    if announce:
        tls = " (TLS)" if settings.security.tls_enabled else ""
        allowed = ", ".join(settings.security.allowed_calling_aets) or "any"
        print(
            f"scanet-node listening as {settings.node.ae_title} on {host}:{port}{tls}", flush=True
        )
        print(f"  catalog: {node.catalog.display_url}", flush=True)
        print(f"  spool:   {node.spool.root}", flush=True)
        print(f"  allowed calling AE titles: {allowed}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
        logger.info("stopped")
