"""The worker: claim a job, run the analysis, record the outcome; send due deliveries.

A worker is its own process (``scanet-node worker``, or started by ``serve``), so analysis
never slows the listener. It holds a lease on the job it runs and renews it from a heartbeat
thread; if it dies (even by SIGKILL), the lease expires and another worker, or this one
restarted, runs the job again. The results of a job that ran twice are the same instances
(pipeline/analysis.py), so the PACS holds them once.

Deliveries are rows too: each is tried by whichever worker claims it, with exponential backoff
while a destination is down or busy, failed at once on a permanent refusal, every attempt
recorded.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from scanet_node.catalog import Catalog, utcnow
from scanet_node.catalog.jobs import AttemptInfo, DeliveryInfo, JobInfo, JobQueue
from scanet_node.catalog.models import DeliveryStatus
from scanet_node.config import Settings
from scanet_node.errors import CheckpointError
from scanet_node.logs import configure_logging

if TYPE_CHECKING:
    from scanet_node.model.predictor import Predictor
    from scanet_node.pipeline.analysis import Analysis
    from scanet_node.results.deliver import SendOutcome

logger = logging.getLogger(__name__)

#: Seconds between polls of an idle worker.
POLL_SECONDS = 0.25


#: glibc's mallopt parameters: allocations above M_MMAP_THRESHOLD get their own mapping,
#: returned to the system when freed; the heap's top is given back only above M_TRIM_THRESHOLD
#: (we trim it ourselves after each unit of work).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 8 << 20
_TRIM_THRESHOLD_BYTES = 256 << 20


def _libc() -> Any:
    """glibc, or None (another C library: nothing to tune)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def keep_memory_returnable() -> None:
    """Give every array of 8 MiB or more (a study's volumes) its own mapping, so that it goes
    back to the system when dropped. Left alone, glibc raises that threshold to the size of the
    largest block freed (up to 32 MiB), and a worker's resident memory creeps up study after
    study with arrays that are free but never returned. Smaller arrays (a 512 x 512 image in
    float64 is 2 MiB) stay on the heap, which is not trimmed at every free (that made each
    of them fault its pages in again, 5x slower) but after each study (:func:`release_memory`).
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


def release_memory() -> None:
    """Return the heap's free memory to the system (after a study)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _Heartbeat:
    """Renews a job's lease every third of its length until stopped."""

    def __init__(self, queue: JobQueue, job_id: int, owner: str, lease_seconds: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(queue, job_id, owner, lease_seconds),
            name=f"lease-job-{job_id}",
            daemon=True,
        )

    def _run(self, queue: JobQueue, job_id: int, owner: str, lease_seconds: float) -> None:
        while not self._stop.wait(lease_seconds / 3):
            try:
                if not queue.renew_lease(job_id, owner, lease_seconds):
                    logger.warning("job %d: lease lost", job_id, extra={"job_id": job_id})
                    return
            except Exception:
                logger.exception("job %d: lease renewal failed", job_id)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """One worker's loop over the catalog's jobs and deliveries.

    Parameters
    ----------
    settings
        The node's settings (catalog, spool, model, destinations, delivery).
    predictor
        A loaded model; by default the one ``[model]`` names, loaded at the first job.
    """

    def __init__(self, settings: Settings, *, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.catalog_url)
        self.queue = JobQueue(self.catalog)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.spool_root = Path(settings.node.spool_dir)
        self._predictor = predictor
        #: Signatures of NCCTs this worker has prepared early, or tried to, and the thread
        #: preparing one now.
        self._prepared_early: set[str] = set()
        self._early: threading.Thread | None = None

    @property
    def predictor(self) -> Predictor:
        """The model, loaded once."""
        if self._predictor is None:
            from scanet_node.model.predictor import Predictor

            model = self.settings.model
            self._predictor = Predictor(
                model.checkpoint, device=model.device, threads=model.threads or None
            )
        return self._predictor

    def close(self) -> None:
        """Release the catalog's connections."""
        self.catalog.close()

    def run_once(self) -> bool:
        """Run one due delivery, else one due job; False when there was nothing to do.

        Deliveries go first: sending takes a second where an analysis takes tens, so results
        that are ready reach the PACS without waiting for the whole backlog of analyses.
        """
        delivery = self.queue.claim_delivery(self.settings.delivery.timeout_seconds * 4)
        if delivery is not None:
            self.deliver(delivery)
            return True
        job = self.queue.claim_job(self.owner, self.settings.pipeline.job_lease_seconds)
        if job is not None:
            self.run_job(job)
            return True
        return self.prepare_early()

    def prepare_early(self) -> bool:
        """Start preparing a settled NCCT that no job uses yet, while its CTA arrives; False
        when there was none to prepare, or one is being prepared.

        The NCCT's half of ``prepare`` runs in a thread of this worker and is kept under the
        spool by the series' signature (imaging/ncct_cache.py), so that the worker can take
        the study's job meanwhile: its ``prepare`` loads the CTA, then waits for the NCCT. A
        failure here costs nothing: the job prepares the NCCT itself and reports what is wrong
        with it.
        """
        from scanet_node.imaging.ncct_cache import NcctCache, signature

        if self._early is not None and self._early.is_alive():
            return False
        try:
            size = self.predictor.input_size
        except CheckpointError:
            return False  # no model: no job will run either
        imaging = self.settings.imaging
        cache = NcctCache.in_spool(self.spool_root)
        since = utcnow() - timedelta(seconds=self.settings.pipeline.pairing_window_seconds)
        for series in self.queue.nccts_to_prepare(since):
            paths = [self.spool_root / p for p in series.paths]
            try:
                key = signature(
                    paths,
                    series_instance_uid=series.series_instance_uid,
                    method=imaging.registration,
                    size=size,
                )
            except OSError:
                continue  # purged meanwhile
            if key in self._prepared_early or cache.has(series.study_instance_uid, key):
                continue
            if len(self._prepared_early) > 10_000:
                self._prepared_early.clear()
            self._prepared_early.add(key)
            self._early = threading.Thread(
                target=self._prepare_ncct,
                args=(cache, key, series.study_instance_uid, series.series_instance_uid, paths),
                name="prepare-ncct",
                daemon=True,
            )
            self._early.start()
            return True
        return False

    def _prepare_ncct(
        self, cache: Any, key: str, study_uid: str, series_uid: str, paths: list[Path]
    ) -> None:
        """Prepare one NCCT into the cache, unless another worker is at it (a thread)."""
        from scanet_node.imaging.prepare import prepare_ncct
        from scanet_node.imaging.qc import NotAnalysable
        from scanet_node.imaging.series import load_series

        imaging = self.settings.imaging
        context = {"study_uid": study_uid}
        with cache.claim(study_uid, key) as mine:
            if not mine:
                return  # another worker is preparing it
            tic = time.perf_counter()
            try:
                prepared = prepare_ncct(
                    load_series(paths),
                    method=imaging.registration,
                    size=self.predictor.input_size,
                    min_similarity=imaging.min_registration_similarity,
                )
                cache.put(key, prepared)
            except NotAnalysable as exc:
                logger.info(
                    "study %s: NCCT %s not prepared early (%s); its job will say why",
                    study_uid,
                    series_uid,
                    exc.reason,
                    extra=context,
                )
                return
            except Exception:
                logger.exception(
                    "study %s: NCCT %s could not be prepared early",
                    study_uid,
                    series_uid,
                    extra=context,
                )
                return
        logger.info(
            "study %s: NCCT %s prepared before its CTA in %.1f s",
            study_uid,
            series_uid,
            time.perf_counter() - tic,
            extra=context,
        )

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; a failure is contained to its job."""
        logger.info("worker %s started", self.owner)
        keep_memory_returnable()
        try:
            self.predictor  # noqa: B018 - load the model now, not during the first study
        except CheckpointError as exc:
            logger.error("no model to run (analyses will fail until this is fixed): %s", exc)
        try:
            from scanet_node.results.sc import warm_up

            warm_up()  # likewise the result images' libraries
        except Exception:
            logger.exception("could not prepare the result images' libraries")
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                logger.exception("worker loop failed; continuing")
                busy = False
            if busy:
                release_memory()
            else:
                stop.wait(POLL_SECONDS)
        if self._early is not None:
            self._early.join(timeout=60)  # an NCCT being prepared: a few seconds
        logger.info("worker %s stopped", self.owner)

    def run_job(self, job: JobInfo) -> None:
        """Analyse one claimed job and record the outcome (or the failure).

        A job that has used its ``job_max_attempts`` (every one ended by an error, or by its
        worker stopping: killed, out of memory) fails for good and answers the study with a
        "not analysable" report that says the analysis failed and why.
        """
        from scanet_node.pipeline.analysis import analyse
        from scanet_node.retry import job_attempts_left

        extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
        if not job_attempts_left(job.attempts - 1, self.settings.pipeline.job_max_attempts):
            self._fail_after_stops(job)
            return
        logger.info(
            "job %d: study %s, attempt %d",
            job.id,
            job.study_instance_uid,
            job.attempts,
            extra=extra,
        )
        lease = self.settings.pipeline.job_lease_seconds
        try:
            with _Heartbeat(self.queue, job.id, self.owner, lease):
                analysis = analyse(
                    job,
                    queue=self.queue,
                    settings=self.settings,
                    predictor=self.predictor,
                    spool_root=self.spool_root,
                )
        except CheckpointError as exc:
            # No usable weights is the administrator's to fix: retrying cannot help.
            logger.error("job %d failed: no model to run: %s", job.id, exc, extra=extra)
            self.queue.fail_job(job.id, self.owner, f"no model to run: {exc}")
            return
        except Exception as exc:
            self._retry_or_fail(job, exc)
            return
        if not self._record(job, analysis, analysis.reason):
            logger.warning("job %d: lease lost before the outcome was recorded", job.id)
            return
        _log_analysis(job, analysis)

    def _fail_after_stops(self, job: JobInfo) -> None:
        """Fail a job back after its last attempt (only a job whose worker stopped comes
        back), and tell the study."""
        stops = job.worker_stops
        reason = f"the worker stopped during the analysis {stops} times (killed, or out of memory)"
        if stops < job.attempts - 1 and job.reason:
            reason += f"; the other attempts failed: {job.reason}"
        logger.error(
            "job %d failed for good: %s",
            job.id,
            reason,
            extra={"study_uid": job.study_instance_uid, "job_id": job.id},
        )
        self._answer_failure(
            job,
            reason,
            f"the analysis stopped {stops} times before it could finish (the process was "
            "ended, most often for lack of memory)",
        )

    def _retry_or_fail(self, job: JobInfo, exc: Exception) -> None:
        """After an analysis raised ``exc`` (logged with its traceback): run the job again
        later while it has attempts left, else fail it for good and tell the study."""
        from scanet_node.retry import job_attempts_left, job_retry_delay

        extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
        pipeline = self.settings.pipeline
        reason = f"{type(exc).__name__}: {exc}"
        if job_attempts_left(job.attempts, pipeline.job_max_attempts):
            delay = job_retry_delay(
                job.attempts,
                initial=pipeline.retry_initial_seconds,
                maximum=pipeline.retry_max_seconds,
            )
            logger.exception(
                "job %d failed, retrying in %.0f s: %s", job.id, delay, reason, extra=extra
            )
            self.queue.fail_job(
                job.id, self.owner, reason, retry_at=utcnow() + timedelta(seconds=delay)
            )
            return
        logger.exception("job %d failed for good: %s", job.id, reason, extra=extra)
        self._answer_failure(
            job,
            f"failed {job.attempts} times; last: {reason}",
            f"an unexpected error stopped it {job.attempts} times "
            f"({type(exc).__name__}; the details are in the node's log)",
        )

    def _record(
        self, job: JobInfo, analysis: Analysis, reason: str | None, *, failed: bool = False
    ) -> bool:
        """Record the job's outcome (failed for good with ``failed``) and queue its deliveries;
        False when the lease was lost to another worker."""
        return self.queue.finish_job(
            job.id,
            self.owner,
            outcome=analysis.outcome,
            reason=reason,
            probability=analysis.probability,
            positive=analysis.positive,
            model=analysis.model,
            sr_sop_instance_uid=analysis.sr_sop_instance_uid,
            results_dir=str(analysis.results_dir.resolve()),
            timings=analysis.timings,
            destinations=self.settings.destinations,
            failed=failed,
            descriptors=analysis.descriptors,
        )

    def _answer_failure(self, job: JobInfo, reason: str, words: str) -> None:
        """Fail ``job`` for good with ``reason`` (for the log and ``jobs``), and send the study
        the report that says so: ``words`` are the radiologist's sentence of why."""
        from scanet_node.pipeline.analysis import answer_failure

        extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
        detail = (
            f"The automated analysis failed: {words}. No prediction will follow for these "
            "images; read the study without it."
        )
        try:
            with _Heartbeat(
                self.queue, job.id, self.owner, self.settings.pipeline.job_lease_seconds
            ):
                report = answer_failure(
                    job,
                    queue=self.queue,
                    settings=self.settings,
                    predictor=self.predictor,
                    spool_root=self.spool_root,
                    detail=detail,
                )
        except Exception:
            logger.exception(
                "job %d: the report of its failure could not be made either", job.id, extra=extra
            )
            self.queue.fail_job(job.id, self.owner, reason)
            return
        if self._record(job, report, reason, failed=True):
            logger.info(
                "job %d: failed; the study is told so (%d result instances)",
                job.id,
                len(report.files),
                extra=extra,
            )
        else:
            logger.warning("job %d: lease lost before the failure was recorded", job.id)

    def deliver(self, delivery: DeliveryInfo) -> DeliveryInfo:
        """Send one delivery's results once and record the attempt."""
        started_at = utcnow()
        tic = time.perf_counter()
        outcome = self._send(delivery)
        attempt = AttemptInfo(
            started_at,
            time.perf_counter() - tic,
            outcome.ok,
            outcome.permanent,
            outcome.status,
            outcome.detail,
            outcome.sent,
        )
        retry_in = self._retry_delay(delivery)
        updated = self._record_attempt(delivery, attempt, retry_in)
        self._log_delivery(delivery, outcome, attempt, updated, retry_in)
        return updated

    def _send(self, delivery: DeliveryInfo) -> SendOutcome:
        """Send the delivery's result files to its destination: the outcome, a permanent
        failure when the destination's TLS files cannot be loaded or the results are gone."""
        from scanet_node.results.deliver import (
            Peer,
            SendOutcome,
            TlsSetupError,
            connection,
            send,
        )
        from scanet_node.results.files import result_files

        files = result_files(Path(delivery.results_dir)) if delivery.results_dir else []
        peer = Peer(delivery.ae_title, delivery.host, delivery.port, delivery.destination)
        try:
            link = connection(peer, self.settings.destinations)
        except TlsSetupError as exc:
            return SendOutcome(ok=False, permanent=True, status="tls", detail=str(exc))
        if not files:
            return SendOutcome(
                ok=False,
                permanent=True,
                status="missing",
                detail=f"the results of job {delivery.job_id} are no longer on disk",
            )
        return send(
            files,
            link.peer,
            calling_aet=self.settings.calling_ae_title,
            timeout=self.settings.delivery.timeout_seconds,
            ssl_context=link.ssl_context,
            server_hostname=link.server_hostname,
        )

    def _retry_delay(self, delivery: DeliveryInfo) -> float:
        """Seconds until the delivery's next attempt, should this one fail."""
        from scanet_node.retry import next_attempt_delay

        settings = self.settings.delivery
        return next_attempt_delay(
            delivery.attempts + 1,
            initial=settings.retry_initial_seconds,
            maximum=settings.retry_max_seconds,
        )

    def _record_attempt(
        self, delivery: DeliveryInfo, attempt: AttemptInfo, retry_in: float
    ) -> DeliveryInfo:
        """Record the attempt; the delivery fails for good once past its give-up time."""
        from scanet_node.retry import should_give_up

        give_up = should_give_up(
            delivery.created_at,
            utcnow(),
            timedelta(hours=self.settings.delivery.give_up_after_hours),
        )
        return self.queue.record_attempt(
            delivery.id,
            attempt,
            next_attempt_at=utcnow() + timedelta(seconds=retry_in),
            give_up=give_up,
        )

    @staticmethod
    def _log_delivery(
        delivery: DeliveryInfo,
        outcome: SendOutcome,
        attempt: AttemptInfo,
        updated: DeliveryInfo,
        retry_in: float,
    ) -> None:
        """Log the attempt: sent, failed for good, or to be retried."""
        extra = {"job_id": delivery.job_id, "study_uid": delivery.study_instance_uid}
        if outcome.ok:
            logger.info(
                "job %d: results sent to %s (%d instances, %.1f s)",
                delivery.job_id,
                delivery.destination,
                outcome.sent,
                attempt.seconds,
                extra=extra,
            )
        elif updated.status == DeliveryStatus.FAILED:
            logger.error(
                "job %d: delivery to %s failed for good after %d attempt(s): %s",
                delivery.job_id,
                delivery.destination,
                updated.attempts,
                outcome.detail,
                extra=extra,
            )
        else:
            logger.warning(
                "job %d: delivery to %s failed (%s), retry in %.0f s",
                delivery.job_id,
                delivery.destination,
                outcome.detail,
                retry_in,
                extra=extra,
            )


def _log_analysis(job: JobInfo, analysis: Analysis) -> None:
    """Log a recorded outcome: the probability, or why the study is not analysable."""
    what = (
        f"P(mTICI >= 2c) = {analysis.probability:.2f}"
        if analysis.probability is not None
        else f"not analysable ({analysis.reason})"
    )
    logger.info(
        "job %d: %s; %d result instances; %.1f s",
        job.id,
        what,
        len(analysis.files),
        analysis.timings.get("total", 0.0),
        extra={"study_uid": job.study_instance_uid, "job_id": job.id},
    )


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set ``stop`` once the process that started this one is gone (its pid is no longer our
    parent's): a worker of a ``serve`` that was killed must not work on, orphaned."""
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logger.warning("serve (pid %d) is gone; this worker stops", parent_pid)
            stop.set()


def run_worker(settings: Settings, stop: Any = None, *, parent_pid: int | None = None) -> None:
    """The body of a worker process: work until SIGTERM/SIGINT (or ``stop`` is set), or, with
    ``parent_pid``, until that parent process has ended."""
    event = stop if stop is not None else threading.Event()
    if stop is None:

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            logger.info("worker received %s, stopping", signal.Signals(signum).name)
            event.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    if parent_pid is not None:
        threading.Thread(
            target=_watch_parent, args=(parent_pid, event), name="parent-watch", daemon=True
        ).start()
    worker = Worker(settings)
    try:
        worker.run(event)
    finally:
        worker.close()


def worker_process_main(settings: Settings, log_level: str, serve_pid: int) -> None:
    """Entry point of the worker process ``serve`` (pid ``serve_pid``) starts (multiprocessing,
    spawn); it stops when serve is gone."""
    configure_logging(log_level)
    run_worker(settings, parent_pid=serve_pid)
