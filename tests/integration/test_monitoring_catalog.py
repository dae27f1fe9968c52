"""Monitoring rows in the catalog: recorded with the analysis, outcomes matched in, purge-proof.

On SQLite and on a real PostgreSQL (the ``catalog_url`` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from pydicom.uid import generate_uid

from scanet_node.catalog import Catalog, utcnow
from scanet_node.catalog.jobs import JobQueue, JobSpec
from scanet_node.catalog.monitoring import Matched, MonitoringStore
from scanet_node.catalog.retention import RetentionStore, StudyToPurge
from scanet_node.catalog.store import InstanceRecord
from scanet_node.ingest.parse import patient_key_of
from scanet_node.monitoring.outcomes import parse_outcomes
from scanet_node.monitoring.report import build_report

TODAY = date.today()


@dataclass(frozen=True)
class Study:
    uid: str
    accession: str
    patient_key: str
    study_date: str


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.close()


def receive(catalog: Catalog, number: int) -> Study:
    study = Study(
        generate_uid(), f"ACC{number:04d}", patient_key_of("HOSP", f"P{number}"), "20261101"
    )
    catalog.record_instance(
        InstanceRecord(
            study_instance_uid=study.uid,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"/spool/{number}.dcm",
            size_bytes=1000,
            received_at=utcnow() - timedelta(days=1),
            patient_key=study.patient_key,
            study_date=study.study_date,
            accession_number=study.accession,
            modality="CT",
        )
    )
    return study


def analyse(
    queue: JobQueue, study: Study, probability: float, *, outcome: str = "analysed"
) -> None:
    job = queue.create_job(
        JobSpec(
            study_instance_uid=study.uid,
            patient_key=study.patient_key,
            ncct_series_uid="a",
            cta_series_uid="b",
            signature=f"sig-{probability}",
        )
    )
    assert job is not None
    claimed = queue.claim_job("w1", 60)
    assert claimed is not None and claimed.id == job.id
    assert queue.finish_job(
        job.id,
        "w1",
        outcome=outcome,
        reason=None,
        probability=probability if outcome == "analysed" else None,
        positive=probability >= 0.5 if outcome == "analysed" else None,
        model="SCANet test",
        sr_sop_instance_uid=generate_uid(),
        results_dir="/tmp/none",
        timings={},
        destinations=[],
        descriptors={"brain_volume_ml": 1300.0 + probability, "scanner_model": "ACME"},
    )


def test_outcomes_are_matched_by_uid_accession_or_patient_and_survive_the_purge(
    catalog: Catalog,
) -> None:
    queue, store = JobQueue(catalog), MonitoringStore(catalog)
    studies = [receive(catalog, n) for n in range(4)]
    for study, p in zip(studies[:3], (0.2, 0.6, 0.9), strict=True):
        analyse(queue, study, p)
    analyse(queue, studies[3], 0.0, outcome="not_analysable")
    records = store.records()
    assert [r.probability for r in records] == [0.2, 0.6, 0.9]
    assert records[0].descriptors == {"brain_volume_ml": 1300.2, "scanner_model": "ACME"}
    assert not records[0].month_only and records[0].grade is None

    csv = (
        "study_instance_uid,accession_number,patient_id,issuer_of_patient_id,ct_date,mtici,"
        "procedure_date\n"
        f"{studies[0].uid},,,,,2b,{TODAY}\n"
        f",{studies[1].accession},,,,2C,{TODAY}\n"
        f",,P2,HOSP,2026-11-01,3,{TODAY}\n"
        f"{studies[3].uid},,,,,1,{TODAY}\n"
        f"1.2.999,,,,,1,{TODAY}\n"
    )
    summary = store.import_outcomes(parse_outcomes(csv, today=TODAY))
    assert [r.result for r in summary.rows] == [Matched.STORED] * 3 + [Matched.UNMATCHED] * 2
    assert summary.matched == 3
    assert "was not analysable" in summary.rows[3].detail
    assert "no study with this Study Instance UID" in summary.rows[4].detail
    assert [r.grade for r in store.records()] == ["2b", "2c", "3"]

    again = store.import_outcomes(parse_outcomes(csv, today=TODAY))
    assert [r.result for r in again.rows][:3] == [Matched.UNCHANGED] * 3
    assert [r.grade for r in store.records()] == ["2b", "2c", "3"]

    later = f"study_instance_uid,mtici,procedure_date\n{studies[0].uid},2c,{TODAY}\n"
    replaced = store.import_outcomes(parse_outcomes(later, today=TODAY))
    assert replaced.rows[0].result == Matched.REPLACED
    assert replaced.rows[0].detail == "grade 2b replaced by 2c"

    # A re-analysis (an amended result) replaces the prediction and keeps the outcome.
    analyse(queue, studies[1], 0.7)
    before = store.records()
    assert [(r.probability, r.grade) for r in before] == [(0.2, "2c"), (0.7, "2c"), (0.9, "3")]

    reference = {
        "brain_volume_ml": {"kind": "numeric", "n": 100, "edges": [1300.5], "shares": [0.5, 0.5]}
    }

    def figures() -> dict[str, object]:
        report = build_report(
            store.records(), threshold=0.5, card={}, reference=reference, now=utcnow()
        )
        return {"performance": report.performance.as_dict(), "drift": report.as_dict()["drift"]}

    figures_before = figures()
    retention = RetentionStore(catalog)
    found, _ = retention.state([studies[0].uid])
    target = next(s for s in found if s.study_instance_uid == studies[0].uid)
    assert retention.purge(
        [StudyToPurge(studies[0].uid, target.last_received_at, 1000)], "age", utcnow()
    )
    after = store.records()
    assert [(r.probability, r.grade, r.descriptors) for r in after] == [
        (r.probability, r.grade, r.descriptors) for r in before
    ]
    assert figures() == figures_before
    assert after[0].month_only and after[0].analysed_at.day == 1
    assert after[0].analysed_at.hour == 0 and not after[1].month_only
    with catalog.read() as session:
        from sqlalchemy import select

        from scanet_node.catalog.models import MonitoringRecord

        purged = session.scalars(select(MonitoringRecord).order_by(MonitoringRecord.id)).first()
        assert purged is not None
        assert purged.study_instance_uid is None and purged.job_id is None
        assert purged.procedure_key is None
        assert purged.procedure_date is not None and purged.procedure_date.day == 1
