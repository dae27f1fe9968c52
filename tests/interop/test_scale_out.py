"""Scale-out: three ``scanet-node worker`` processes race over thirty jobs on one PostgreSQL.

The set-up ARCHITECTURE.md describes for more than one machine: the catalog on PostgreSQL, the
spool and results on a shared folder, a node that receives and schedules (here in-process, no
worker of its own) and N worker processes that claim jobs with ``SELECT ... FOR UPDATE SKIP
LOCKED``. Thirty studies of one small NCCT each become thirty "CTA missing" jobs through the real
path (C-STORE, settle, classification, trigger); every job must run exactly once and its
results reach the receiving Storage SCP exactly once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NodeFactory, wait_for
from dicom_samples import ct_series
from model_samples import untrained_checkpoint
from node_config import node_config
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from scu import association

from scanet_node.catalog import Catalog, utcnow
from scanet_node.catalog.jobs import JobInfo, JobQueue

STUDIES = 30
WORKERS = 3
SLICES = 4
CLI = [sys.executable, "-m", "scanet_node"]


class Receiver:
    """A Storage SCP (the PACS) that keeps every C-STORE it acknowledged, repeats included."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, str]] = []  # (SOP Class UID, SOP Instance UID)
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.maximum_associations = 2 * WORKERS
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        with self._lock:
            self.stored.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        return 0x0000


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    scp = Receiver()
    yield scp
    scp.server.shutdown()


class Workers:
    """``scanet-node worker`` processes, each with its own log file."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []

    def start(self, config: Path, folder: Path, count: int) -> None:
        for n in range(count):
            log = folder / f"worker{n}.log"
            with log.open("w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [*CLI, "--config", str(config), "worker"],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            self.logs.append(log)

    def texts(self) -> list[str]:
        return [log.read_text() for log in self.logs]

    def stop(self) -> list[int | None]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=30))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


@pytest.fixture
def workers() -> Iterator[Workers]:
    started = Workers()
    yield started
    started.stop()


def send_studies(node: Any) -> list[str]:
    """Send STUDIES studies of one small NCCT each, one patient per study; their UIDs."""
    uids = []
    with association(node, calling="CT01") as assoc:
        assert assoc.is_established
        for i in range(STUDIES):
            series = ct_series(SLICES, size=32, description="NCCT Head 5mm")
            for ds in series:
                ds.PatientID = f"PID-SECRET-{i:02d}"  # made up; must never reach a log
                status = assoc.send_c_store(ds)
                assert status.Status == 0x0000
            uids.append(str(series[0].StudyInstanceUID))
    return uids


def test_three_workers_on_postgresql_run_thirty_jobs_once_each(
    tmp_path: Path,
    postgres_url: str,
    node_factory: NodeFactory,
    receiver: Receiver,
    workers: Workers,
) -> None:
    shared = tmp_path / "shared"  # the spool and the results, as on a shared file system
    node = node_factory(
        shared,
        catalog={"url": postgres_url},
        pipeline={"series_settle_seconds": 1, "pairing_window_seconds": 1, "workers": 0},
        imaging={"min_images": SLICES},
    )
    queue = JobQueue(Catalog(postgres_url, create=False))
    engine = sa.create_engine(postgres_url)

    def no_log() -> str:
        return ""

    studies = send_studies(node)
    queued = wait_for(
        "30 queued jobs",
        lambda: (jobs := queue.jobs()) and len(jobs) == STUDIES and jobs,
        60,
        no_log,
    )
    assert {j.study_instance_uid for j in queued} == set(studies)
    assert all(j.status == "queued" and j.missing == "CTA missing" for j in queued)

    # The jobs wait until every worker has its model loaded, so the three race from the
    # same start (otherwise the first to import torch takes most of them).
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE job SET run_after = :t"), {"t": utcnow() + timedelta(days=1)})
    config = node_config(
        tmp_path / "worker.toml",
        data_dir=shared,
        checkpoint=untrained_checkpoint(tmp_path / "untrained-64.pt", 64, "the scale-out test"),
        destination=("pacs", "PACS", receiver.port),
        pipeline={"job_lease_seconds": 10},
        catalog={"url": postgres_url},
        admin={"enabled": False},
    )
    workers.start(config, tmp_path, WORKERS)

    def logs() -> str:
        return "\n".join(workers.texts())

    wait_for(
        "every worker to load its model",
        lambda: all(" weights " in t and " loaded " in t for t in workers.texts()),
        90,
        logs,
    )
    tic = time.monotonic()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE job SET run_after = :t"), {"t": utcnow()})

    def delivered() -> list[JobInfo] | None:
        jobs = queue.jobs()
        deliveries = queue.deliveries()
        finished = all(j.status in ("done", "failed") for j in jobs)
        if (
            finished
            and len(deliveries) == STUDIES
            and all(d.status != "pending" for d in deliveries)
        ):
            return jobs
        return None

    jobs = wait_for("every job done and delivered", delivered, 120, logs)
    seconds = time.monotonic() - tic
    assert workers.stop() == [0] * WORKERS
    texts = workers.texts()

    # Every job ran once and its results went out once.
    assert len(jobs) == STUDIES
    assert [(j.status, j.attempts) for j in jobs] == [("done", 1)] * STUDIES, logs()
    deliveries = queue.deliveries()
    assert sorted(d.job_id for d in deliveries) == sorted(j.id for j in jobs)
    assert all(d.status == "sent" and d.attempts == 1 for d in deliveries)
    # The PACS got each result instance exactly once: 30 SRs and the images beside them.
    counts = Counter(uid for _, uid in receiver.stored)
    assert [uid for uid, n in counts.items() if n > 1] == []
    srs = {uid for cls, uid in receiver.stored if cls == Comprehensive3DSRStorage}
    assert srs == {j.sr_sop_instance_uid for j in jobs}
    assert len(srs) == STUDIES
    written = [p for j in jobs for p in Path(str(j.results_dir)).glob("*.dcm")]
    assert len(receiver.stored) == len(written)

    # Every worker claimed jobs, and no job was claimed by two.
    claimed = [
        {int(m) for m in re.findall(r"job (\d+): study [\d.]+, attempt 1", t)} for t in texts
    ]
    assert all(claimed), [len(c) for c in claimed]
    assert sum(len(c) for c in claimed) == STUDIES
    assert set().union(*claimed) == {j.id for j in jobs}
    assert not any("SECRET" in t for t in texts)
    print(
        f"{STUDIES} jobs on {WORKERS} workers in {seconds:.1f} s; "
        f"per worker {[len(c) for c in claimed]}; {len(written)} result instances"
    )
    queue.catalog.close()
    engine.dispose()
