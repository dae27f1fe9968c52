"""Jobs and deliveries in the catalog (catalog/jobs.py), on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from pydicom.uid import generate_uid

from scanet_node.catalog import Catalog, utcnow
from scanet_node.catalog.jobs import AttemptInfo, JobQueue, JobSpec


@pytest.fixture
def queue(catalog_url: str) -> Iterator[JobQueue]:
    catalog = Catalog(catalog_url)
    yield JobQueue(catalog)
    catalog.close()


@dataclass(frozen=True)
class Dest:
    name: str = "pacs"
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242


def spec(study: str, sig: str = "ncct=a:1;cta=b:1", **kw: object) -> JobSpec:
    return JobSpec(
        study_instance_uid=study,
        patient_key="k",
        ncct_series_uid="a",
        cta_series_uid="b",
        signature=sig,
        **kw,  # type: ignore[arg-type]
    )


def finish(queue: JobQueue, job_id: int, owner: str, destinations: list[Dest]) -> bool:
    return queue.finish_job(
        job_id,
        owner,
        outcome="analysed",
        reason=None,
        probability=0.7,
        positive=True,
        model="SCANet test",
        sr_sop_instance_uid="1.2.3",
        results_dir="/tmp/none",
        timings={"infer": 0.25},
        destinations=destinations,
    )


def test_one_active_job_per_study(queue: JobQueue) -> None:
    study = generate_uid()
    first = queue.create_job(spec(study))
    assert first is not None and first.status == "queued"
    assert queue.create_job(spec(study, "other")) is None  # the partial unique index
    claimed = queue.claim_job("w1", 60)
    assert claimed is not None and claimed.id == first.id and claimed.attempts == 1
    assert queue.create_job(spec(study, "other")) is None  # running counts as active
    assert finish(queue, first.id, "w1", [Dest()])
    amended = queue.create_job(spec(study, "other", supersedes_id=first.id))
    assert amended is not None and amended.supersedes_id == first.id


def test_a_lease_that_expires_lets_another_worker_run_the_job(queue: JobQueue) -> None:
    job = queue.create_job(spec(generate_uid()))
    assert job is not None
    assert queue.claim_job("w1", 60) is not None
    assert queue.claim_job("w2", 60) is None  # held
    later = utcnow() + timedelta(seconds=61)
    again = queue.claim_job("w2", 60, now=later)
    assert again is not None and again.attempts == 2 and again.lease_owner == "w2"
    assert again.worker_stops == 1  # the first attempt ended with its worker gone
    # The first worker lost its lease: its outcome is not recorded.
    assert not finish(queue, job.id, "w1", [Dest()])
    assert not queue.renew_lease(job.id, "w1", 60)
    assert finish(queue, job.id, "w2", [Dest()])
    done = queue.job(job.id)
    assert done is not None and done.status == "done" and done.probability == 0.7
    assert done.timings == {"infer": 0.25}


def test_a_job_failed_for_good_can_carry_its_report_to_the_pacs(queue: JobQueue) -> None:
    """The report that says the analysis failed is delivered like any result's."""
    job = queue.create_job(spec(generate_uid()))
    assert job is not None and queue.claim_job("w1", 60) is not None
    assert queue.finish_job(
        job.id, "w1", outcome="not_analysable", reason="the worker stopped ... 3 times",
        probability=None, positive=None, model="SCANet test", sr_sop_instance_uid="1.2.4",
        results_dir="/tmp/none", timings={}, destinations=[Dest()], failed=True,
    )  # fmt: skip
    failed = queue.job(job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.outcome == "not_analysable" and failed.sr_sop_instance_uid == "1.2.4"
    assert [d.status for d in queue.deliveries()] == ["pending"]


def test_racing_workers_claim_each_job_once(queue: JobQueue) -> None:
    for _ in range(12):
        assert queue.create_job(spec(generate_uid())) is not None
    claimed: list[int] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        while (job := queue.claim_job(owner, 60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12


def test_a_failed_job_is_retried_then_given_up(queue: JobQueue) -> None:
    job = queue.create_job(spec(generate_uid()))
    assert job is not None and queue.claim_job("w", 60) is not None
    retry = utcnow() + timedelta(seconds=30)
    assert queue.fail_job(job.id, "w", "RuntimeError: boom", retry_at=retry)
    assert queue.claim_job("w", 60) is None  # not yet due
    again = queue.claim_job("w", 60, now=retry + timedelta(seconds=1))
    assert again is not None and again.attempts == 2
    assert queue.fail_job(job.id, "w", "RuntimeError: boom again")
    failed = queue.job(job.id)
    assert failed is not None and failed.status == "failed" and "again" in (failed.reason or "")


def test_deliveries_record_every_attempt_and_resend(queue: JobQueue) -> None:
    job = queue.create_job(spec(generate_uid()))
    assert job is not None and queue.claim_job("w", 60) is not None
    assert finish(queue, job.id, "w", [Dest(), Dest(name="archive", port=104)])
    first = queue.claim_delivery(60)
    assert first is not None and first.destination == "pacs"
    second = queue.claim_delivery(60)
    assert second is not None and second.destination == "archive"
    assert queue.claim_delivery(60) is None  # both leased
    now = utcnow()
    down = AttemptInfo(now, 0.01, False, False, "unreachable", "connection refused", 0)
    retry = queue.record_attempt(first.id, down, next_attempt_at=now + timedelta(seconds=5))
    assert retry.status == "pending" and retry.attempts == 1
    assert queue.claim_delivery(60) is None  # not due yet
    up = AttemptInfo(now, 0.2, True, False, "success", "6 stored", 6)
    later = now + timedelta(seconds=6)
    due = queue.claim_delivery(60, now=later)
    assert due is not None and due.id == first.id
    sent = queue.record_attempt(first.id, up, next_attempt_at=None)
    assert sent.status == "sent" and [a.status for a in sent.attempt_rows] == [
        "unreachable",
        "success",
    ]
    refused = AttemptInfo(now, 0.1, False, True, "unsupported", "SR not supported", 0)
    failed = queue.record_attempt(second.id, refused, next_attempt_at=later)
    assert failed.status == "failed"
    assert queue.resend(second.id) is not None
    assert queue.claim_delivery(60, now=later) is not None
    listed = queue.deliveries(job_id=job.id)
    assert {d.destination: d.attempts for d in listed} == {"pacs": 2, "archive": 1}


def test_reprocess_queues_an_amendment(queue: JobQueue) -> None:
    study = generate_uid()
    assert queue.reprocess(study) is None
    job = queue.create_job(spec(study))
    assert job is not None
    assert queue.claim_job("w", 60) is not None and finish(queue, job.id, "w", [])
    again = queue.reprocess(study)
    assert again is not None and again.supersedes_id == job.id
    assert again.signature.startswith(job.signature + ";reprocess=")
    assert queue.reprocess(study) is None  # one is queued already
