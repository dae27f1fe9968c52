"""Retention over a real node: DICOM in, files and rows purged, one de-identified audit row.

Instances are sent over DICOM (pynetdicom on 127.0.0.1) with a Patient Name and ID; jobs
and deliveries are made with the JobQueue API as a worker would. Studies are aged by moving
their timestamps (rows and file modification times) back, or by a tiny ``[retention] days``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import NodeFactory, wait_for
from dicom_samples import PATIENT_ID, PATIENT_NAME, ct_dataset, iter_spool
from node_config import node_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scu import association
from sqlalchemy import select, update

from scanet_node.catalog import Catalog, InstanceRecord, utcnow
from scanet_node.catalog.jobs import AttemptInfo, JobQueue, JobSpec
from scanet_node.catalog.models import (
    Delivery,
    DeliveryAttempt,
    Instance,
    Job,
    PurgeAudit,
    Series,
    Study,
)
from scanet_node.catalog.retention import RetentionStore, StudyToPurge
from scanet_node.config import RetentionSettings
from scanet_node.errors import SpoolError
from scanet_node.ingest.spool import Spool, cache_dir
from scanet_node.pipeline.retention import run_retention
from scanet_node.service import Node

KEEP_30 = RetentionSettings(days=30)


@dataclass(frozen=True)
class Dest:
    name: str
    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    port: int = 4242


@dataclass
class SentStudy:
    study_uid: str
    series_uids: list[str]
    datasets: list[Dataset]

    @property
    def uids(self) -> list[str]:
        return [self.study_uid, *self.series_uids, *(ds.SOPInstanceUID for ds in self.datasets)]


def send_study(
    node: Node, *series_sizes: int, study_uid: str | None = None, patient_id: str = PATIENT_ID
) -> SentStudy:
    """Send a study with series of the given sizes over DICOM; every C-STORE must succeed."""
    study_uid = study_uid or generate_uid()
    series_uids = [generate_uid() for _ in series_sizes]
    datasets = [
        ct_dataset(study_uid, series_uid, index=i)
        for series_uid, size in zip(series_uids, series_sizes, strict=True)
        for i in range(size)
    ]
    for ds in datasets:
        assert ds.PatientName == PATIENT_NAME
        ds.PatientID = patient_id
    with association(node) as assoc:
        statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assert statuses == [0x0000] * len(datasets)
    return SentStudy(study_uid, series_uids, datasets)


def spool_paths(node: Node, study_uid: str) -> list[Path]:
    return sorted((node.spool.root / study_uid).rglob("*.dcm"))


def age(catalog: Catalog, study_uid: str, days: float, spool_root: Path) -> None:
    """Move a study's arrival back by ``days``: its rows' timestamps and its files' mtimes."""
    shift = timedelta(days=days)
    with catalog.write() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        study.first_received_at -= shift
        study.last_received_at -= shift
        for series in session.scalars(select(Series).where(Series.study_id == study.id)):
            series.first_received_at -= shift
            series.last_received_at -= shift
            session.execute(
                update(Instance)
                .where(Instance.series_id == series.id)
                .values(received_at=Instance.received_at - shift)
            )
    for path in (spool_root / study_uid).rglob("*.dcm"):
        stat = path.stat()
        os.utime(
            path, (stat.st_atime - shift.total_seconds(), stat.st_mtime - shift.total_seconds())
        )


def settle_and_classify(catalog: Catalog, *series_roles: tuple[str, str]) -> None:
    """What the scheduler would do: settle the series, give each its role."""
    queue = JobQueue(catalog)
    catalog.settle_series(0)
    for series_uid, role in series_roles:
        queue.set_series_role(series_uid, role, "test")


def finished_job(
    catalog: Catalog,
    study_uid: str,
    ncct_uid: str,
    cta_uid: str,
    results_root: Path,
    delivered: list[bool | None],
) -> int:
    """A job done by a worker, with results on disk and one delivery per entry of
    ``delivered``: True sent, False failed for good, None still pending (one failed try)."""
    queue = JobQueue(catalog)
    job = queue.create_job(
        JobSpec(study_uid, "key", ncct_uid, cta_uid, signature=f"ncct={ncct_uid};cta={cta_uid}")
    )
    assert job is not None
    claimed = queue.claim_job("test-worker", 60)
    assert claimed is not None and claimed.id == job.id
    folder = results_root / f"job-{job.id}"
    folder.mkdir(parents=True)
    (folder / "sr.dcm").write_bytes(b"S" * 1000)
    (folder / "summary.png").write_bytes(b"P" * 234)
    assert queue.finish_job(
        job.id,
        "test-worker",
        outcome="analysed",
        reason=None,
        probability=0.8,
        positive=True,
        model="SCANet test",
        sr_sop_instance_uid=generate_uid(),
        results_dir=str(folder.resolve()),
        timings={"total": 1.0},
        destinations=[Dest(f"d{i}") for i in range(len(delivered))],
    )
    for outcome in delivered:
        delivery = queue.claim_delivery(60)
        assert delivery is not None
        attempt = AttemptInfo(utcnow(), 0.1, bool(outcome), outcome is False, "test", "test", 1)
        queue.record_attempt(delivery.id, attempt, next_attempt_at=utcnow() + timedelta(hours=1))
    return job.id


def count_rows(catalog: Catalog, model: Any) -> int:
    with catalog.read() as session:
        return len(session.scalars(select(model)).all())


def quiet_node(node_factory: NodeFactory, **sections: dict[str, Any]) -> Node:
    """A node whose scheduler is stopped: the test runs each sweep itself."""
    node = node_factory(**sections)
    node.scheduler.stop()
    return node


def catalog_bytes(node: Node) -> bytes:
    db = node.settings.node.data_dir / "catalog.sqlite"
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_an_old_study_is_purged_files_rows_and_all(node_factory: NodeFactory) -> None:
    node = quiet_node(node_factory)
    catalog, spool_root = node.catalog, node.spool.root
    results_root = node.settings.results_dir
    old = send_study(node, 3, 2)
    young = send_study(node, 2, patient_id="ANOTHER-PATIENT")
    settle_and_classify(catalog, (old.series_uids[0], "ncct"), (old.series_uids[1], "cta"))
    job_id = finished_job(
        catalog, old.study_uid, *old.series_uids, results_root, delivered=[True, None]
    )
    with catalog.read() as session:
        patient_key = session.scalars(
            select(Study.patient_key).where(Study.study_instance_uid == old.study_uid)
        ).one()
    assert patient_key and len(patient_key) == 64
    old_files = spool_paths(node, old.study_uid)
    young_files = spool_paths(node, young.study_uid)
    expected_bytes = sum(p.stat().st_size for p in old_files) + 1000 + 234
    age(catalog, old.study_uid, 31, spool_root)
    # What a worker prepared ahead of the job (imaging/ncct_cache.py) for each study.
    caches = {uid: cache_dir(spool_root, "ncct") / uid for uid in (old.study_uid, young.study_uid)}
    for folder in caches.values():
        folder.mkdir(parents=True)
        (folder / "0123abcd.npz").write_bytes(b"prepared NCCT")

    report = run_retention(catalog, KEEP_30, spool_root, results_root)

    assert [(p.study_instance_uid, p.rule) for p in report.purged] == [(old.study_uid, "age")]
    assert report.purged[0].files == 5 + 2 and report.bytes_freed == expected_bytes
    # The purged study's prepared NCCT went with it; the other study's is kept.
    assert not caches[old.study_uid].exists() and caches[young.study_uid].is_dir()
    # Files: exactly the study's, its (now empty) folders and the job's results folder.
    assert not any(p.exists() for p in old_files)
    assert not (spool_root / old.study_uid).exists()
    assert not (results_root / f"job-{job_id}").exists() and results_root.is_dir()
    assert spool_paths(node, young.study_uid) == young_files
    assert (spool_root / ".tmp").is_dir()
    # Rows: gone, the other study's kept.
    assert catalog.get_study(old.study_uid) is None
    assert catalog.get_study(young.study_uid) is not None
    assert count_rows(catalog, Job) == count_rows(catalog, Delivery) == 0
    assert count_rows(catalog, DeliveryAttempt) == 0
    assert catalog.count_instances() == 2
    # One audit row, with the counts and nothing that names the study or the patient.
    (audit,) = RetentionStore(catalog).audits()
    assert audit == report.purged[0].audit
    assert (audit.rule, audit.num_series, audit.num_instances) == ("age", 2, 5)
    assert (audit.jobs, audit.outcome) == (1, "analysed")
    assert (audit.deliveries_sent, audit.deliveries_failed) == (1, 1)  # pending: given up
    assert audit.bytes_freed == expected_bytes
    assert audit.last_received_at < utcnow() - timedelta(days=30)
    with catalog.read() as session:
        row = session.scalars(select(PurgeAudit)).one()
        text = json.dumps({c.name: str(getattr(row, c.name)) for c in PurgeAudit.__table__.c})
    for secret in [*old.uids, patient_key, PATIENT_ID, "TESTPATIENT", "20261129"]:
        assert secret not in text
    # The SQLite file (and its WAL) no longer hold the study's UIDs or patient key: the
    # sweep checkpointed, and secure_delete zeroed the deleted rows.
    raw = catalog_bytes(node)
    assert young.study_uid.encode() in raw  # the check can see a study that is there
    for secret in [*old.uids, patient_key]:
        assert secret.encode() not in raw, secret


def test_purge_after_delivery_takes_a_delivered_study_at_once(node_factory: NodeFactory) -> None:
    node = quiet_node(node_factory, retention={"purge_after_delivery": True})
    catalog, spool_root = node.catalog, node.spool.root
    results_root = node.settings.results_dir
    delivered, undelivered, no_job = (
        send_study(node, 2, 2),
        send_study(node, 2, 2),
        send_study(node, 1),
    )
    roles = [(s.series_uids[0], "ncct") for s in (delivered, undelivered)]
    roles += [(s.series_uids[1], "cta") for s in (delivered, undelivered)]
    settle_and_classify(catalog, *roles, (no_job.series_uids[0], "other"))
    finished_job(catalog, delivered.study_uid, *delivered.series_uids, results_root, [True, True])
    finished_job(
        catalog, undelivered.study_uid, *undelivered.series_uids, results_root, [True, None]
    )

    report = run_retention(catalog, node.settings.retention, spool_root, results_root)

    assert [(p.study_instance_uid, p.rule) for p in report.purged] == [
        (delivered.study_uid, "delivered")
    ]
    assert catalog.get_study(delivered.study_uid) is None
    assert spool_paths(node, delivered.study_uid) == []
    for kept in (undelivered, no_job):
        assert catalog.get_study(kept.study_uid) is not None
        assert len(spool_paths(node, kept.study_uid)) == len(kept.datasets)
    (audit,) = RetentionStore(catalog).audits()
    assert (audit.rule, audit.deliveries_sent, audit.deliveries_failed) == ("delivered", 2, 0)


def test_an_instance_arriving_during_the_sweep_keeps_the_study(node_factory: NodeFactory) -> None:
    node = quiet_node(node_factory)
    catalog, spool_root = node.catalog, node.spool.root
    study = send_study(node, 3)
    age(catalog, study.study_uid, 31, spool_root)
    late = ct_dataset(study.study_uid, study.series_uids[0], index=7)

    class SendWhenTheGroupIsPurged:
        """The sweep's guard, entered just before the study is purged: one more arrives."""

        def __enter__(self) -> None:
            with association(node) as assoc:
                assert assoc.send_c_store(late).Status == 0x0000

        def __exit__(self, *exc: object) -> None:
            return None

    report = run_retention(
        catalog, KEEP_30, spool_root, node.settings.results_dir, guard=SendWhenTheGroupIsPurged()
    )

    assert report.purged == [] and report.skipped == 1
    summary = catalog.get_study(study.study_uid)
    assert summary is not None and summary.num_instances == 4
    assert len(spool_paths(node, study.study_uid)) == 4
    assert RetentionStore(catalog).audits() == []


def test_the_purge_transaction_refuses_a_study_that_changed(node_factory: NodeFactory) -> None:
    node = quiet_node(node_factory)
    catalog = node.catalog
    study = send_study(node, 2)
    decided = catalog.get_study(study.study_uid)
    assert decided is not None
    send_study(node, 1, study_uid=study.study_uid)  # arrives after the decision
    store = RetentionStore(catalog)
    stale = StudyToPurge(study.study_uid, decided.last_received_at, 0)
    assert store.purge([stale], "age", utcnow()) is None
    assert catalog.count_instances() == 3 and store.audits() == []


def test_an_instance_of_a_purged_study_is_kept_as_a_new_study(node_factory: NodeFactory) -> None:
    node = quiet_node(node_factory)
    catalog, spool_root = node.catalog, node.spool.root
    study = send_study(node, 2)
    age(catalog, study.study_uid, 31, spool_root)
    assert len(run_retention(catalog, KEEP_30, spool_root, node.settings.results_dir).purged) == 1
    again = send_study(node, 1, study_uid=study.study_uid)
    summary = catalog.get_study(study.study_uid)
    assert summary is not None and summary.num_instances == 1
    assert spool_paths(node, study.study_uid) == [
        spool_root
        / study.study_uid
        / again.series_uids[0]
        / f"{again.datasets[0].SOPInstanceUID}.dcm"
    ]


def test_the_scheduler_purges_by_itself_and_spares_a_study_in_analysis(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(retention={"days": 1e-5, "sweep_seconds": 1})
    busy_uid = generate_uid()
    queued = JobQueue(node.catalog).create_job(
        JobSpec(busy_uid, None, None, None, "queued by the test")
    )
    assert queued is not None
    busy = send_study(node, 1, study_uid=busy_uid)
    study = send_study(node, 2)
    files = spool_paths(node, study.study_uid)
    wait_for(
        "the scheduler to purge the study", lambda: node.catalog.get_study(study.study_uid) is None
    )
    assert not any(p.exists() for p in files)
    assert not (node.spool.root / study.study_uid).exists()
    (audit,) = RetentionStore(node.catalog).audits()
    assert (audit.rule, audit.num_instances) == ("age", 2)
    # The study with a queued job is old too, but kept while the job waits.
    assert node.catalog.get_study(busy.study_uid) is not None
    assert len(spool_paths(node, busy.study_uid)) == 1


def test_nothing_outside_the_spool_and_results_folder_is_deleted(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = quiet_node(node_factory)
    catalog, spool_root = node.catalog, node.spool.root
    study = send_study(node, 2, 2)
    settle_and_classify(catalog, (study.series_uids[0], "ncct"), (study.series_uids[1], "cta"))
    elsewhere = tmp_path / "elsewhere"
    finished_job(catalog, study.study_uid, *study.series_uids, elsewhere, [True])
    age(catalog, study.study_uid, 31, spool_root)

    report = run_retention(catalog, KEEP_30, spool_root, node.settings.results_dir)
    assert report.purged == []
    assert len(report.held) == 1 and "outside" in report.held[0].reason
    assert "[node] data_dir" in report.held[0].reason
    assert len(list(elsewhere.rglob("*"))) == 3  # job-N/ and its two files
    assert len(spool_paths(node, study.study_uid)) == 4
    assert catalog.get_study(study.study_uid) is not None
    # A spool that is not there (a relative data_dir seen from another folder) stops it all.
    with pytest.raises(SpoolError, match=r"\[node\] data_dir"):
        run_retention(catalog, KEEP_30, tmp_path / "no-spool", node.settings.results_dir)
    assert catalog.get_study(study.study_uid) is not None


def test_a_failed_sweep_is_logged_and_the_next_one_heals_it(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Files deleted, then the transaction fails (as after a crash): the node goes on, and
    the next sweep purges the rows that are left."""
    node = quiet_node(node_factory)
    catalog, spool_root = node.catalog, node.spool.root
    study = send_study(node, 2)
    age(catalog, study.study_uid, 31, spool_root)
    PurgeAudit.__table__.drop(catalog.engine)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="scanet_node.pipeline.scheduler"):
        node.scheduler.retention_sweep()
    assert "retention sweep failed" in caplog.text
    assert spool_paths(node, study.study_uid) == []  # the files went first
    assert catalog.get_study(study.study_uid) is not None
    other = send_study(node, 1)  # the listener is not disturbed
    node.scheduler.sweep()  # nor are the other sweeps
    PurgeAudit.__table__.create(catalog.engine)  # type: ignore[attr-defined]
    node.scheduler.retention_sweep()
    assert catalog.get_study(study.study_uid) is None
    assert catalog.get_study(other.study_uid) is not None
    (audit,) = RetentionStore(catalog).audits()
    assert (audit.num_instances, audit.bytes_freed) == (2, 0)  # freed by the failed sweep


REPO = Path(__file__).resolve().parents[2]


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``scanet-node ARGS`` in a subprocess, with a config file naming ``data_dir``."""
    config = node_config(data_dir.parent / "config.toml", data_dir=data_dir, retention={"days": 30})
    done = subprocess.run(
        [sys.executable, "-m", "scanet_node", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_purge_and_audit_commands(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = quiet_node(node_factory, node={"data_dir": str(tmp_path / "data")})
    data_dir = node.settings.node.data_dir
    study = send_study(node, 2)
    files = spool_paths(node, study.study_uid)
    size = sum(p.stat().st_size for p in files)
    age(node.catalog, study.study_uid, 31, node.spool.root)

    dry = run_cli(data_dir, "purge", "--dry-run")
    assert f"would purge study {study.study_uid} (age): 2 files, {size} bytes" in dry.stdout
    assert f"would purge 1 studies, {size} bytes" in dry.stdout
    assert all(p.exists() for p in files) and node.catalog.get_study(study.study_uid)
    assert json.loads(run_cli(data_dir, "audit", "--json").stdout) == []

    done = run_cli(data_dir, "purge")
    assert f"purged 1 studies, {size} bytes" in done.stdout
    assert not any(p.exists() for p in files) and node.catalog.get_study(study.study_uid) is None

    out = run_cli(data_dir, "audit", "--json", "--limit", "5").stdout
    (row,) = json.loads(out)
    assert (row["rule"], row["num_series"], row["num_instances"]) == ("age", 1, 2)
    assert row["bytes_freed"] == size and row["jobs"] == 0
    assert not any(uid in out for uid in study.uids)
    assert "age" in run_cli(data_dir, "audit").stdout


# -- the catalog side, on SQLite and a real PostgreSQL --------------------------------------


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.close()


def file_instances(
    catalog: Catalog, spool_root: Path, study_uid: str, series_uid: str, n: int, at: datetime
) -> None:
    for _ in range(n):
        sop = generate_uid()
        relative = f"{study_uid}/{series_uid}/{sop}.dcm"
        path = spool_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"D" * 100)
        os.utime(path, (at.timestamp(), at.timestamp()))
        catalog.record_instance(
            InstanceRecord(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_instance_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=relative,
                size_bytes=100,
                received_at=at,
                patient_key="k" * 64,
            )
        )


def test_linked_studies_are_purged_together_in_one_transaction(
    catalog: Catalog, tmp_path: Path
) -> None:
    """The NCCT in one study, the CTA (and the job) in another: both go, or neither."""
    spool_root, results_root = Spool(tmp_path / "spool").root, tmp_path / "results"
    long_ago = utcnow() - timedelta(days=40)
    ncct_study, cta_study, other = generate_uid(), generate_uid(), generate_uid()
    ncct, cta = generate_uid(), generate_uid()
    file_instances(catalog, spool_root, ncct_study, ncct, 3, long_ago)
    file_instances(catalog, spool_root, cta_study, cta, 2, long_ago)
    file_instances(catalog, spool_root, other, generate_uid(), 1, utcnow())
    settle_and_classify(catalog, (ncct, "ncct"), (cta, "cta"))
    first = finished_job(catalog, cta_study, ncct, cta, results_root, [False])
    queue = JobQueue(catalog)
    amended = queue.create_job(JobSpec(cta_study, "key", ncct, cta, "amended", supersedes_id=first))
    assert amended is not None

    # The amendment is queued: the pair is held (and the NCCT's study with it).
    report = run_retention(catalog, KEEP_30, spool_root, results_root)
    assert report.purged == []
    assert [h.study_instance_uids for h in report.held] == [tuple(sorted((ncct_study, cta_study)))]

    claimed = queue.claim_job("w", 60)
    assert claimed is not None and claimed.id == amended.id
    queue.fail_job(amended.id, "w", "test: failed for good")
    report = run_retention(catalog, KEEP_30, spool_root, results_root)
    assert sorted(p.study_instance_uid for p in report.purged) == sorted((ncct_study, cta_study))
    assert not (spool_root / ncct_study).exists() and not (spool_root / cta_study).exists()
    assert not (results_root / f"job-{first}").exists()
    assert [s.study_instance_uid for s in catalog.list_studies()] == [other]
    assert count_rows(catalog, Job) == count_rows(catalog, Delivery) == 0
    audits = {a.num_instances: a for a in RetentionStore(catalog).audits()}
    assert sorted(audits) == [2, 3]
    assert (audits[2].jobs, audits[2].outcome, audits[2].deliveries_failed) == (2, "failed", 0)
    assert audits[2].bytes_freed == 2 * 100 + 1000 + 234
    assert (audits[3].jobs, audits[3].outcome, audits[3].bytes_freed) == (0, None, 300)
    assert len(list(iter_spool(spool_root))) == 1
