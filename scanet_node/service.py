"""The ``serve`` process: the catalog, the spool, the listener, the scheduler, the workers.

The workers run in their own processes (multiprocessing, spawn), so analysis never holds up
the listener; one that dies is started again, and the job it held runs again once its lease
has expired (pipeline/worker.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from types import FrameType
from typing import Any

from scanet_node.admin import AdminServer, NodeView
from scanet_node.catalog import Catalog
from scanet_node.catalog.jobs import JobQueue
from scanet_node.catalog.monitoring import MonitoringStore
from scanet_node.catalog.overview import Overview
from scanet_node.config import DEFAULT_CHECKPOINT, Settings
from scanet_node.imaging.classify import rules_from_settings
from scanet_node.ingest.handlers import StoreService
from scanet_node.ingest.server import Listener
from scanet_node.ingest.spool import Spool
from scanet_node.monitoring.live import Monitor
from scanet_node.pipeline.scheduler import Scheduler

logger = logging.getLogger(__name__)


class Node:
    """A running node: listener, catalog, spool and scheduler, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.catalog_url)
        self.spool = Spool(settings.node.spool_dir, settings.node.min_free_disk_mb * 1024 * 1024)
        self.listener = Listener(settings, StoreService(self.catalog, self.spool))
        self.monitor = Monitor(
            MonitoringStore(self.catalog), settings.model.checkpoint or DEFAULT_CHECKPOINT
        )
        self.scheduler = Scheduler(
            self.catalog,
            settings.pipeline.series_settle_seconds,
            settings.pipeline.settle_sweep_seconds,
            release_grace_seconds=settings.pipeline.settle_after_release_seconds,
            spool_root=self.spool.root,
            rules=rules_from_settings(settings.imaging),
            pairing_window_seconds=settings.pipeline.pairing_window_seconds,
            retention=settings.retention,
            results_root=settings.results_dir,
        )
        self.workers: list[Any] = []
        #: The admin web page (``[admin]``), running while the node runs.
        self.admin: AdminServer | None = None
        self._supervise_stop = threading.Event()
        self._supervisor: threading.Thread | None = None

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
        if self.settings.admin.enabled:
            admin = AdminServer(self.admin_view())
            try:
                admin.start()
            except Exception:
                self.listener.stop(0)
                self.catalog.close()
                raise
            self.admin = admin
        self.scheduler.start()
        for n in range(self.settings.pipeline.workers):
            self.workers.append(self._start_worker(n))
        if self.workers:
            self._supervisor = threading.Thread(
                target=self._supervise, name="worker-supervisor", daemon=True
            )
            self._supervisor.start()
        return address

    def admin_view(self) -> NodeView:
        """What the admin page may read of this node: nothing it could start, stop or write."""
        service = self.listener.service
        return NodeView(
            settings=self.settings,
            catalog_url=self.catalog.display_url,
            overview=Overview(self.catalog),
            job=JobQueue(self.catalog).job,
            listener_address=self._listener_address,
            open_associations=self.listener.active_associations,
            recent_associations=service.recent_associations,
            instance_counts=service.instance_counts,
            association_counts=service.association_counts,
            workers_running=self._workers_running,
            disk_free_bytes=self.spool.free_bytes,
            min_free_bytes=self.spool.min_free_bytes,
            accepting_instances=lambda free: self.spool.has_room(free=free),
            monitoring=self.monitor.report,
        )

    def _listener_address(self) -> tuple[str, int] | None:
        try:
            return self.listener.address
        except RuntimeError:
            return None

    def _workers_running(self) -> int:
        return sum(1 for p in self.workers if p.is_alive())

    def _start_worker(self, n: int) -> Any:
        from scanet_node.pipeline.worker import worker_process_main

        process = multiprocessing.get_context("spawn").Process(
            target=worker_process_main,
            args=(self.settings, self.settings.logging.level, os.getpid()),
            name=f"scanet-worker-{n}",
            daemon=False,
        )
        process.start()
        logger.info("worker process %d started (pid %s)", n, process.pid)
        return process

    def _supervise(self) -> None:
        while not self._supervise_stop.wait(1.0):
            for n, process in enumerate(self.workers):
                if not process.is_alive() and not self._supervise_stop.is_set():
                    logger.error(
                        "worker process %d (pid %s) ended with exit code %s; starting another",
                        n,
                        process.pid,
                        process.exitcode,
                    )
                    self.workers[n] = self._start_worker(n)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let open associations finish, stop the scheduler and the workers."""
        if self.admin is not None:
            self.admin.stop()
        self.listener.stop(grace_seconds)
        self.scheduler.stop()
        self._supervise_stop.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for process in self.workers:
            process.terminate()  # SIGTERM: the worker finishes its step and exits
        for process in self.workers:
            process.join(grace_seconds + 20)
            if process.is_alive():
                logger.warning("worker pid %s did not stop; killing it", process.pid)
                process.kill()
                process.join()
        if self.workers:
            _stop_resource_tracker()
        self.catalog.close()


def _stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker and wait for it to exit.

    Starting a worker by "spawn" starts a resource tracker process beside it, which would
    otherwise exit on its own only once serve has exited: for a moment after serve returns, a
    process of it would still be alive, which an init system or a test may see as a node half
    stopped. Only called once every worker has exited. ``_stop`` is the tracker's own
    (private) shutdown, the one CPython's tests use; should it ever go, the tracker exits as
    before, a moment later.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)
    if callable(stop):
        try:
            stop()
        except Exception:  # never let the tidy-up stop the stop
            logger.debug("resource tracker did not stop cleanly", exc_info=True)


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
    try:
        if announce:
            _announce(node, host, port)
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
        logger.info("stopped")


def _announce(node: Node, host: str, port: int) -> None:
    """Print where the node listens and what it runs (serve's banner)."""
    settings = node.settings
    tls = " (TLS)" if settings.security.tls_enabled else ""
    allowed = ", ".join(settings.security.allowed_calling_aets) or "any"
    print(f"scanet-node listening as {settings.node.ae_title} on {host}:{port}{tls}", flush=True)
    print(f"  catalog: {node.catalog.display_url}", flush=True)
    print(f"  spool:   {node.spool.root}", flush=True)
    print(f"  allowed calling AE titles: {allowed}", flush=True)
    for aet, hosts in settings.security.ae_hosts.items():
        print(f"  {aet} only from: {', '.join(hosts)}", flush=True)
    workers = settings.pipeline.workers
    checkpoint = settings.model.checkpoint or DEFAULT_CHECKPOINT
    if not checkpoint.is_file():
        model = f"NONE: {checkpoint} is missing; set [model] checkpoint (analyses fail until then)"
    elif checkpoint == DEFAULT_CHECKPOINT:
        model = f"{checkpoint} (demo weights: trained on synthetic data, NOT for clinical use)"
    else:
        model = str(checkpoint)
    print(f"  analysis: {workers} worker process(es), model {model}", flush=True)
    targets = ", ".join(
        f"{d.name} ({d.ae_title}@{d.host}:{d.port}{', TLS' if d.tls else ''})"
        for d in settings.destinations
    )
    print(f"  results to: {targets or 'no destination configured'}", flush=True)
    admin = node.admin.url if node.admin is not None else "off ([admin] enabled = false)"
    print(f"  admin page: {admin}", flush=True)
