"""Alembic owns the catalog schema, on SQLite and on a real PostgreSQL server.

A fresh catalog migrated to head is the models exactly; catalogs made by earlier scanet-node
versions (before Alembic: no ``alembic_version``) are stamped at the revision their tables match
and upgraded with their rows; downgrades are real; the ``db`` commands work in a subprocess; and
several processes opening one fresh catalog at once all succeed, one of them migrating it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import wait_for
from node_config import node_config
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError

from scanet_node.catalog import Catalog, InstanceRecord
from scanet_node.catalog.engine import create_catalog_engine
from scanet_node.catalog.jobs import JobQueue
from scanet_node.catalog.models import Base
from scanet_node.catalog.schema import (
    ADVISORY_LOCK_KEY,
    HEAD_REVISION,
    MIGRATIONS_DIR,
    downgrade_schema,
    upgrade_schema,
)
from scanet_node.errors import CatalogError

CLI = [sys.executable, "-m", "scanet_node"]
T0 = datetime(2026, 11, 1, 8, 0, 0)


def differences(engine: sa.Engine) -> list[object]:
    """What Alembic's autogenerate sees between the database and the models (types and
    server defaults compared too)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def assert_active_job_index_is_partial(engine: sa.Engine) -> None:
    """Autogenerate does not compare an index's WHERE clause: check it, and that it works."""
    (index,) = [
        i for i in sa.inspect(engine).get_indexes("job") if i["name"] == "uq_job_active_study"
    ]
    assert index["unique"] and index["column_names"] == ["study_instance_uid"]
    where = str(index["dialect_options"][f"{engine.dialect.name}_where"])
    assert "queued" in where and "running" in where and "status" in where
    job = Base.metadata.tables["job"]
    row = {
        "study_instance_uid": "1.2.3",
        "signature": "s",
        "attempts": 0,
        "run_after": T0,
        "created_at": T0,
    }
    with engine.begin() as conn:
        conn.execute(job.insert(), [{**row, "status": "done"}, {**row, "status": "done"}])
        conn.execute(job.insert(), {**row, "status": "queued"})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(job.insert(), {**row, "status": "running"})
    with engine.begin() as conn:
        conn.execute(job.delete().where(job.c.study_instance_uid == "1.2.3"))


# The schemas of earlier versions, as their create_all made them: Core tables copied from
# scanet_node/catalog/models.py of 46aca38 (0001) and 7145804 (0002). Not the models of today:
# these must not change when the models do.


def schema_0001() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "study",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_key", sa.String(64), index=True),
        sa.Column("study_date", sa.String(8)),
        sa.Column("study_description", sa.String(64)),
        sa.Column("num_instances", sa.Integer, nullable=False),
        sa.Column("first_received_at", sa.DateTime, nullable=False),
        sa.Column("last_received_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "series",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.ForeignKey("study.id"), nullable=False, index=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16)),
        sa.Column("sop_class_uid", sa.String(64)),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.String(64)),
        sa.Column("image_type", sa.String(128)),
        sa.Column("contrast_agent", sa.String(64)),
        sa.Column("slice_thickness", sa.Float),
        sa.Column("body_part_examined", sa.String(16)),
        sa.Column("calling_aet", sa.String(16)),
        sa.Column("num_instances", sa.Integer, nullable=False),
        # Enum(SeriesState, native_enum=False, length=16): it stored the names, "SETTLED".
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_received_at", sa.DateTime, nullable=False),
        sa.Column("last_received_at", sa.DateTime, nullable=False),
        sa.Column("settled_at", sa.DateTime),
        sa.Index("ix_series_state_last", "state", "last_received_at"),
    )
    sa.Table(
        "instance",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("series_id", sa.ForeignKey("series.id"), nullable=False, index=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("path", sa.String(260), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("calling_aet", sa.String(16)),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    return md


def schema_0002() -> sa.MetaData:
    md = schema_0001()
    series = md.tables["series"]
    series.append_column(sa.Column("role", sa.String(8)))
    series.append_column(sa.Column("role_reason", sa.Text))
    active = sa.text("status IN ('queued', 'running')")
    sa.Table(
        "job",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("patient_key", sa.String(64)),
        sa.Column("ncct_series_uid", sa.String(64)),
        sa.Column("cta_series_uid", sa.String(64)),
        sa.Column("missing", sa.String(16)),
        sa.Column("signature", sa.String(400), nullable=False),
        sa.Column("supersedes_id", sa.ForeignKey("job.id")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_after", sa.DateTime, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.DateTime),
        sa.Column("outcome", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("probability", sa.Float),
        sa.Column("positive", sa.Boolean),
        sa.Column("model", sa.String(120)),
        sa.Column("sr_sop_instance_uid", sa.String(64)),
        sa.Column("results_dir", sa.String(260)),
        sa.Column("timings", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("inputs_received_at", sa.DateTime),
        sa.Index("ix_job_status_run_after", "status", "run_after"),
        sa.Index(
            "uq_job_active_study",
            "study_instance_uid",
            unique=True,
            sqlite_where=active,
            postgresql_where=active,
        ),
    )
    sa.Table(
        "delivery",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.ForeignKey("job.id"), nullable=False, index=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("lease_expires_at", sa.DateTime),
        sa.Column("last_status", sa.String(32)),
        sa.Column("last_detail", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("sent_at", sa.DateTime),
        sa.Index("ix_delivery_status_next", "status", "next_attempt_at"),
    )
    sa.Table(
        "delivery_attempt",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivery_id", sa.ForeignKey("delivery.id"), nullable=False, index=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("permanent", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
    )
    return md


def fill_0001(conn: sa.Connection, md: sa.MetaData, state: str = "SETTLED") -> dict[str, str]:
    """One study, one settled series of two instances, as 46aca38 filed them."""
    uids = {"study": generate_uid(), "series": generate_uid()}
    study_id = conn.execute(
        md.tables["study"].insert(),
        {
            "study_instance_uid": uids["study"],
            "num_instances": 2,
            "first_received_at": T0,
            "last_received_at": T0,
        },
    ).inserted_primary_key[0]
    series_id = conn.execute(
        md.tables["series"].insert(),
        {
            "study_id": study_id,
            "series_instance_uid": uids["series"],
            "modality": "CT",
            "num_instances": 2,
            "state": state,
            "first_received_at": T0,
            "last_received_at": T0,
            "settled_at": T0,
        },
    ).inserted_primary_key[0]
    conn.execute(
        md.tables["instance"].insert(),
        [
            {
                "series_id": series_id,
                "sop_instance_uid": generate_uid(),
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "path": f"spool/{i}.dcm",
                "size_bytes": 1000,
                "received_at": T0,
            }
            for i in (1, 2)
        ],
    )
    return uids


def make_earlier_catalog(url: str, era: str) -> dict[str, str]:
    """An unversioned catalog as the scanet-node of ``era`` left it, with a few rows."""
    md = schema_0001() if era == "0001" else schema_0002()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        md.create_all(conn)
        uids = fill_0001(conn, md, "SETTLED" if era == "0001" else "settled")
        if era == "0002":
            conn.execute(md.tables["series"].update().values(role="ncct", role_reason="NCCT: tags"))
            job_id = conn.execute(
                md.tables["job"].insert(),
                {
                    "study_instance_uid": uids["study"],
                    "ncct_series_uid": uids["series"],
                    "missing": "CTA missing",
                    "signature": f"ncct={uids['series']}:2;cta=missing",
                    "status": "done",
                    "attempts": 1,
                    "run_after": T0,
                    "outcome": "not_analysable",
                    "created_at": T0,
                },
            ).inserted_primary_key[0]
            delivery_id = conn.execute(
                md.tables["delivery"].insert(),
                {
                    "job_id": job_id,
                    "destination": "pacs",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 104,
                    "status": "sent",
                    "attempts": 1,
                    "next_attempt_at": T0,
                    "created_at": T0,
                    "sent_at": T0,
                },
            ).inserted_primary_key[0]
            conn.execute(
                md.tables["delivery_attempt"].insert(),
                {
                    "delivery_id": delivery_id,
                    "started_at": T0,
                    "seconds": 0.5,
                    "ok": True,
                    "permanent": False,
                    "status": "0x0000",
                    "detail": "sent 1",
                    "sent": 1,
                },
            )
    engine.dispose()
    return uids


def test_the_head_revision_is_the_newest_script_and_the_chain_is_linear() -> None:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [HEAD_REVISION]
    chain = [r.revision for r in script.walk_revisions("base", "heads")]
    assert chain[0] == HEAD_REVISION and chain[-3:] == ["0003", "0002", "0001"]


def test_a_fresh_catalog_is_the_models_exactly(catalog_url: str) -> None:
    Catalog(catalog_url).close()
    engine = create_catalog_engine(catalog_url)
    assert revision(engine) == HEAD_REVISION
    assert differences(engine) == []
    assert_active_job_index_is_partial(engine)
    engine.dispose()


@pytest.mark.parametrize("era", ["0001", "0002"])
def test_an_unversioned_catalog_of_an_earlier_version_is_stamped_upgraded_and_kept(
    catalog_url: str, era: str
) -> None:
    uids = make_earlier_catalog(catalog_url, era)
    engine = create_catalog_engine(catalog_url)
    assert revision(engine) is None
    before, after = upgrade_schema(engine, "test")
    assert (before.revision, before.matches, after.revision) == (None, era, HEAD_REVISION)
    assert revision(engine) == HEAD_REVISION
    assert differences(engine) == []
    assert_active_job_index_is_partial(engine)
    engine.dispose()

    catalog = Catalog(catalog_url)
    study = catalog.get_study(uids["study"])
    assert study is not None and study.num_instances == 2
    (series,) = study.series
    # 46aca38 stored the SeriesState names; 0002 made them the values every later version reads.
    assert series.state == "settled" and series.num_instances == 2
    assert series.role == ("ncct" if era == "0002" else None)
    assert catalog.count_instances() == 2
    # New rows go in beside the old ones.
    catalog.record_instance(
        InstanceRecord(
            study_instance_uid=uids["study"],
            series_instance_uid=uids["series"],
            sop_instance_uid=generate_uid(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path="spool/3.dcm",
            size_bytes=1000,
            received_at=T0,
        )
    )
    assert catalog.count_instances() == 3
    jobs = JobQueue(catalog).jobs()
    if era == "0002":
        (job,) = jobs
        assert job.missing == "CTA missing" and job.status == "done"
        (delivery,) = JobQueue(catalog).deliveries(job_id=job.id)
        assert delivery.status == "sent" and len(delivery.attempt_rows) == 1
    else:
        assert jobs == []
    catalog.close()


def test_downgrade_to_base_and_upgrade_again(catalog_url: str) -> None:
    engine = create_catalog_engine(catalog_url)
    upgrade_schema(engine, "test")
    all_tables = {t.name for t in Base.metadata.sorted_tables}
    assert tables(engine) == all_tables | {"alembic_version"}
    # Rows of the tables a downgrade keeps survive it.
    md = schema_0001()
    with engine.begin() as conn:
        uids = fill_0001(conn, md, "settled")
    assert downgrade_schema(engine, "0002", "test").revision == "0002"
    assert "purge_audit" not in tables(engine)
    assert downgrade_schema(engine, "0001", "test").revision == "0001"
    assert tables(engine) == {"study", "series", "instance", "alembic_version"}
    columns = {c["name"] for c in sa.inspect(engine).get_columns("series")}
    assert columns == set(md.tables["series"].columns.keys())
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM instance")).scalar() == 2
    back, _ = upgrade_schema(engine, "test")
    assert back.revision == "0001"
    catalog = Catalog(catalog_url)
    assert catalog.get_study(uids["study"]) is not None
    catalog.close()
    assert downgrade_schema(engine, "base", "test").revision is None
    assert tables(engine) == {"alembic_version"}
    Catalog(catalog_url).close()
    assert revision(engine) == HEAD_REVISION
    assert differences(engine) == []
    engine.dispose()


def test_an_unknown_revision_is_refused_naming_it(catalog_url: str) -> None:
    Catalog(catalog_url).close()
    engine = create_catalog_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    for create in (True, False):
        with pytest.raises(CatalogError, match=r"schema revision 0099, which this scanet-node"):
            Catalog(catalog_url, create=create)
    assert revision(engine) == "0099"  # left as it was
    engine.dispose()


def test_read_only_opening_migrates_nothing_and_asks_for_db_upgrade(catalog_url: str) -> None:
    engine = create_catalog_engine(catalog_url)
    upgrade_schema(engine, "test")
    downgrade_schema(engine, "0002", "test")
    with pytest.raises(CatalogError, match=r"revision 0002, .* run scanet-node db upgrade"):
        Catalog(catalog_url, create=False)
    assert revision(engine) == "0002"
    downgrade_schema(engine, "base", "test")
    with pytest.raises(CatalogError, match=r"is empty: start scanet-node serve"):
        Catalog(catalog_url, create=False)
    engine.dispose()


def test_tables_that_match_no_schema_are_refused_and_left_untouched(catalog_url: str) -> None:
    make_earlier_catalog(catalog_url, "0002")
    engine = create_catalog_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE series DROP COLUMN role_reason"))
    with pytest.raises(
        CatalogError, match=r"matches no scanet-node schema: .* lack series\.role_reason"
    ):
        Catalog(catalog_url)
    # The stamp and the upgrade were rolled back with the refusal.
    assert revision(engine) is None and "purge_audit" not in tables(engine)
    # A catalog at head altered by hand afterwards is refused too, naming what is missing.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE series ADD COLUMN role_reason TEXT"))
    Catalog(catalog_url).close()
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE job DROP COLUMN timings"))
    with pytest.raises(
        CatalogError, match=rf"at schema revision {HEAD_REVISION} but lacks job\.timings"
    ):
        Catalog(catalog_url)
    engine.dispose()


def write_config(folder: Path, url: str) -> Path:
    return node_config(folder / "config.toml", data_dir=folder / "data", catalog={"url": url})


def db(config: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(config), "db", action],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_current_and_upgrade_commands(catalog_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, catalog_url)
    if catalog_url.startswith("sqlite"):
        missing = db(config, "current")
        assert missing.returncode == 2 and "no catalog at" in missing.stderr
    make_earlier_catalog(catalog_url, "0001")
    current = db(config, "current")
    assert current.returncode == 1, current.stderr
    assert "unversioned (made by an earlier scanet-node; its tables match 0001)" in current.stdout
    assert f"not head ({HEAD_REVISION}): run scanet-node db upgrade" in current.stdout
    # Read-only commands refuse it rather than migrate it.
    studies = subprocess.run(
        [*CLI, "--config", str(config), "studies"], capture_output=True, text=True, check=False
    )
    assert studies.returncode == 2 and "run scanet-node db upgrade" in studies.stderr
    upgrade = db(config, "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout.strip().endswith(
        "unversioned (made by an earlier scanet-node; its tables match 0001) "
        f"-> revision {HEAD_REVISION} (head)"
    )
    assert "Running upgrade 0001 -> 0002" in upgrade.stderr  # the steps, in the log
    current = db(config, "current")
    assert current.returncode == 0 and current.stdout.strip().endswith(
        f"revision {HEAD_REVISION} (head)"
    )
    again = db(config, "upgrade")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    studies = subprocess.run(
        [*CLI, "--config", str(config), "studies"], capture_output=True, text=True, check=False
    )
    assert studies.returncode == 0 and "2 instances" in studies.stdout


def upgrade_together(
    config: Path, count: int, tmp_path: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``scanet-node db upgrade`` in ``count`` processes released at one instant: each
    imports the package, says it is ready, and waits for the go file."""
    go = tmp_path / "go"
    code = (
        "import pathlib, sys, time\n"
        "import scanet_node.cli, scanet_node.catalog.schema\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.002)\n"
        f"sys.exit(scanet_node.cli.main(['--config', {str(config)!r}, 'db', 'upgrade']))\n"
    )
    ready = [tmp_path / f"ready{n}" for n in range(count)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    wait_for(
        "every process to be ready",
        lambda: all(f.exists() for f in ready),
        60,
        lambda: "".join(p.communicate()[1] for p in procs if p.poll() is not None),
        stop_if=lambda: any(p.poll() is not None for p in procs),
    )
    go.touch()
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_processes_opening_one_fresh_catalog_at_once_all_succeed(
    catalog_url: str, tmp_path: Path
) -> None:
    done = upgrade_together(write_config(tmp_path, catalog_url), 4, tmp_path)
    assert [p.returncode for p in done] == [0] * 4, [p.stderr[-2000:] for p in done]
    said = sorted(p.stdout.split(": ", 1)[1].strip() for p in done)
    # Exactly one migrated; the others waited on the lock and found the catalog at head.
    assert said == [
        *[f"at revision {HEAD_REVISION} (head), nothing to do"] * 3,
        f"empty -> revision {HEAD_REVISION} (head)",
    ]
    engine = create_catalog_engine(catalog_url)
    assert revision(engine) == HEAD_REVISION
    assert differences(engine) == []
    engine.dispose()


def waits_for_the_lock(engine: sa.Engine, pid: int) -> bool:
    """Whether process ``pid`` waits for the schema lock: on PostgreSQL, its advisory lock is
    not granted yet; on SQLite, it has the catalog file open (it takes the write lock next)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar_one()
        return bool(waiting)
    database = Path(str(engine.url.database)).resolve()
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(fd.resolve() == database for fd in fds.iterdir())
    return False


def test_an_upgrade_waits_for_the_schema_lock(catalog_url: str, tmp_path: Path) -> None:
    """The lock every opener takes (PostgreSQL: the advisory lock; SQLite: the write lock of
    BEGIN IMMEDIATE): held here, an upgrading process waits for it instead of failing."""
    engine = create_catalog_engine(catalog_url)
    config = write_config(tmp_path, catalog_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        proc = subprocess.Popen(
            [*CLI, "--config", str(config), "db", "upgrade"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(
            "the upgrade to reach the lock",
            lambda: waits_for_the_lock(engine, proc.pid),
            60,
            lambda: proc.communicate()[1] if proc.poll() is not None else "",
            stop_if=lambda: proc.poll() is not None,
        )
        # Waited out on purpose: a "database is locked" answer would come at once.
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip().endswith(f"empty -> revision {HEAD_REVISION} (head)")
    assert revision(engine) == HEAD_REVISION
    engine.dispose()
