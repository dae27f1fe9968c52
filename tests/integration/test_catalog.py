from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from scanet_node.catalog import Catalog, InstanceRecord, utcnow


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog(catalog_url)
    yield cat
    cat.close()


def record(
    study: str, series: str, sop: str | None = None, at: datetime | None = None, **extra: object
) -> InstanceRecord:
    sop = sop or generate_uid()
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"{study}/{series}/{sop}.dcm",
        size_bytes=100,
        received_at=at or utcnow(),
        calling_aet="CT01",
        modality="CT",
        **extra,  # type: ignore[arg-type]
    )


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    catalog.close()


def test_record_instances_and_summaries(catalog: Catalog) -> None:
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    first = catalog.record_instance(
        record(study, s1, series_description="NCCT", slice_thickness=5.0, series_number=2)
    )
    assert first.new_instance and first.new_study and first.new_series
    second = catalog.record_instance(record(study, s1))
    assert second.new_instance and not second.new_study and not second.new_series
    catalog.record_instance(record(study, s2, contrast_agent="Iohexol", image_type="ORIGINAL"))
    summary = catalog.get_study(study)
    assert summary is not None
    assert summary.num_instances == 3
    by_uid = {s.series_instance_uid: s for s in summary.series}
    assert by_uid[s1].num_instances == 2
    assert by_uid[s1].series_description == "NCCT"
    assert by_uid[s1].slice_thickness == 5.0
    assert by_uid[s2].contrast_agent == "Iohexol"
    assert by_uid[s1].state == "receiving"
    assert by_uid[s1].calling_aet == "CT01"
    assert [s.study_instance_uid for s in catalog.list_studies()] == [study]
    assert catalog.get_study(generate_uid()) is None
    assert catalog.count_instances() == 3


def test_duplicate_instance_is_idempotent(catalog: Catalog) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    catalog.record_instance(record(study, series, sop))
    again = catalog.record_instance(record(study, series, sop))
    assert not again.new_instance and again.conflict is None
    summary = catalog.get_study(study)
    assert summary is not None and summary.num_instances == 1
    assert summary.series[0].num_instances == 1
    assert catalog.count_instances() == 1


def test_instance_refiled_under_another_series_is_refused(catalog: Catalog) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    catalog.record_instance(record(study, series, sop))
    moved = catalog.record_instance(record(study, generate_uid(), sop))
    assert moved.conflict == "SOP Instance UID belongs to another series"
    # The refused attempt left nothing behind: still one series, one instance.
    summary = catalog.get_study(study)
    assert summary is not None and len(summary.series) == 1
    other_study = catalog.record_instance(record(generate_uid(), series))
    assert other_study.conflict == "Series Instance UID belongs to another study"
    assert len(catalog.list_studies()) == 1


def test_settle_sweep(catalog: Catalog) -> None:
    study, quiet, busy = generate_uid(), generate_uid(), generate_uid()
    now = utcnow()
    catalog.record_instance(record(study, quiet, at=now - timedelta(seconds=30)))
    catalog.record_instance(record(study, busy, at=now - timedelta(seconds=2)))
    settled = catalog.settle_series(10, now=now)
    assert [s.series_instance_uid for s in settled] == [quiet]
    assert settled[0].study_instance_uid == study and settled[0].num_instances == 1
    assert catalog.settle_series(10, now=now) == []
    states = {s.series_instance_uid: s.state for s in catalog.get_study(study).series}  # type: ignore[union-attr]
    assert states == {quiet: "settled", busy: "receiving"}
    # A late instance reopens a settled series.
    late = catalog.record_instance(record(study, quiet, at=now))
    assert late.reopened_series
    summary = catalog.get_study(study)
    assert summary is not None
    assert {s.state for s in summary.series} == {"receiving"}
    assert all(s.settled_at is None for s in summary.series)


def test_a_series_its_sender_released_settles_after_the_grace(catalog: Catalog) -> None:
    study, done, other, grown = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    now = utcnow()
    for series in (done, other, grown):
        catalog.record_instance(record(study, series, at=now - timedelta(seconds=3)))
    assert catalog.mark_series_released([done, grown], at=now - timedelta(seconds=2)) == 2
    # The next instance of a released series clears the mark: the sender was not done.
    catalog.record_instance(record(study, grown, at=now - timedelta(seconds=1)))
    # Within the grace nothing settles; after it, the released series does, and only it.
    assert catalog.settle_series(60, now=now, release_grace_seconds=5) == []
    settled = catalog.settle_series(60, now=now, release_grace_seconds=1.5)
    assert [(s.series_instance_uid, s.why) for s in settled] == [(done, "released")]
    # Without a release grace only the quiet time counts, as before.
    assert catalog.settle_series(60, now=now) == []
    assert [s.why for s in catalog.settle_series(2, now=now)] == ["quiet"]
    # A settled series is not marked again; marking an unknown series is harmless.
    assert catalog.mark_series_released([done, generate_uid()]) == 0
    states = {s.series_instance_uid: s.state for s in catalog.get_study(study).series}  # type: ignore[union-attr]
    assert states == {done: "settled", other: "settled", grown: "receiving"}


def test_out_of_order_times_keep_the_latest(catalog: Catalog) -> None:
    study, series = generate_uid(), generate_uid()
    now = utcnow()
    catalog.record_instance(record(study, series, at=now))
    catalog.record_instance(record(study, series, at=now - timedelta(seconds=60)))
    summary = catalog.get_study(study)
    assert summary is not None and summary.series[0].last_received_at == now


def test_concurrent_writers_lose_nothing(catalog_url: str) -> None:
    catalogs = [Catalog(catalog_url) for _ in range(2)]  # two engines, as two processes would have
    study = generate_uid()
    series = [generate_uid() for _ in range(4)]
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            for _ in range(50):
                catalogs[i % 2].record_instance(record(study, series[i]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    summary = catalogs[0].get_study(study)
    assert summary is not None and summary.num_instances == 200
    assert sorted(s.num_instances for s in summary.series) == [50] * 4
    for c in catalogs:
        c.close()


def test_unopenable_catalog_is_a_catalog_error(tmp_path: Path) -> None:
    from scanet_node.errors import CatalogError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CatalogError, match="cannot open catalog"):
        Catalog(f"sqlite:///{blocker}/sub/c.sqlite")


def test_same_instance_from_two_writers_at_once(catalog_url: str) -> None:
    catalogs = [Catalog(catalog_url) for _ in range(2)]
    study, series = generate_uid(), generate_uid()
    records = [record(study, series) for _ in range(40)]
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def file_all(cat: Catalog) -> None:
        for rec in records:
            barrier.wait(timeout=30)
            try:
                outcomes.append(cat.record_instance(rec))
            except BaseException as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=file_all, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    summary = catalogs[0].get_study(study)
    assert summary is not None and summary.num_instances == 40
    assert summary.series[0].num_instances == 40
    for c in catalogs:
        c.close()


def test_a_catalog_of_an_earlier_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    """More cases, on PostgreSQL too, in test_catalog_migrations.py."""
    import sqlite3

    from scanet_node.catalog.schema import HEAD_REVISION

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    study = generate_uid()
    catalog = Catalog(url)
    catalog.record_instance(record(study, generate_uid()))
    catalog.close()
    # What issue 6's scanet-node made: no purge_audit, no job.worker_stops, no
    # series.released_at, no monitoring, no study.accession_number, no alembic_version.
    with sqlite3.connect(tmp_path / "catalog.sqlite") as con:
        con.execute("DROP TABLE purge_audit")
        con.execute("DROP TABLE monitoring")
        con.execute("DROP INDEX ix_study_accession_number")
        con.execute("ALTER TABLE study DROP COLUMN accession_number")
        con.execute("ALTER TABLE job DROP COLUMN worker_stops")
        con.execute("ALTER TABLE series DROP COLUMN released_at")
        con.execute("DROP TABLE alembic_version")
    catalog = Catalog(url)
    assert [s.study_instance_uid for s in catalog.list_studies()] == [study]
    with catalog.engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        assert version == HEAD_REVISION
        assert conn.exec_driver_sql("SELECT count(*) FROM purge_audit").scalar() == 0
    catalog.close()


def test_an_instance_filed_while_a_purge_deletes_its_study_is_kept(postgres_url: str) -> None:
    """PostgreSQL, READ COMMITTED: a purge that commits between record_instance's reads and its
    updates must not leave an acknowledged instance without a row: it is filed anew."""
    from sqlalchemy import event

    from scanet_node.catalog.retention import RetentionStore, StudyToPurge

    catalog = Catalog(postgres_url)
    try:
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        catalog.record_instance(record(study, series, sop))
        (summary,) = catalog.list_studies()
        purged: list[bool] = []

        def purge_first(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if statement.startswith("UPDATE instance") and not purged:
                purged.append(True)
                old = StudyToPurge(study, summary.last_received_at, 0)
                assert RetentionStore(catalog).purge([old], "age", utcnow()) is not None

        event.listen(catalog.engine, "before_cursor_execute", purge_first)
        outcome = catalog.record_instance(record(study, series, sop))  # the same instance again
        event.remove(catalog.engine, "before_cursor_execute", purge_first)
        assert purged and outcome.conflict is None
        assert catalog.count_instances() == 1
        (again,) = catalog.list_studies()
        assert again.study_instance_uid == study and outcome.new_study
    finally:
        catalog.close()


def test_activity_is_the_recent_studies_and_every_job_that_concerns_them(
    catalog: Catalog,
) -> None:
    """What ``doctor`` explains: studies received in the window, their own jobs, and a job of
    another study that used one of their series (an NCCT paired across studies)."""
    from scanet_node.catalog.jobs import JobQueue, JobSpec
    from scanet_node.catalog.overview import Overview

    now = utcnow()
    recent, old, other = generate_uid(), generate_uid(), generate_uid()
    ncct = generate_uid()
    catalog.record_instance(record(recent, ncct))
    catalog.record_instance(record(old, generate_uid(), at=now - timedelta(hours=48)))
    queue = JobQueue(catalog)
    paired = queue.create_job(
        JobSpec(study_instance_uid=other, patient_key="k", ncct_series_uid=ncct,
                cta_series_uid=generate_uid(), signature="s")
    )  # fmt: skip
    unrelated = queue.create_job(
        JobSpec(study_instance_uid=generate_uid(), patient_key="k", ncct_series_uid="x",
                cta_series_uid="y", signature="t")
    )  # fmt: skip
    assert paired is not None and unrelated is not None
    activity = Overview(catalog).activity(now - timedelta(hours=24))
    assert [s.study_instance_uid for s in activity.studies] == [recent]
    assert [j.id for j in activity.jobs] == [paired.id]
    assert activity.deliveries == []


def test_the_doctor_command_names_what_each_study_waits_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from scanet_node.cli import main

    data = tmp_path / "data"
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite'}")
    study = generate_uid()
    catalog.record_instance(record(study, generate_uid()))
    catalog.close()
    assert main(["doctor", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "1 studies received in the last 24 h: 0 with their result sent, 1 without"
    )
    assert f"{study}  last image" in out and "receiving" in out
    assert main(["doctor", "--data-dir", str(data), "--json", "--hours", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["studies"] == 1
    assert [w["state"] for w in report["unanswered"]] == ["receiving"]
