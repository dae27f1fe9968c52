"""The catalog's schema, owned by Alembic: brought to the head revision when the node opens it.

The revisions live in ``catalog/migrations/versions/`` (shipped with the package; Alembic is
configured here in code, there is no alembic.ini). Opening a catalog for writing
(:func:`upgrade_schema`, what ``Catalog(url)`` does) upgrades it:

* a catalog at the head revision is left alone after one read of ``alembic_version``;
* an empty database gets every revision;
* a catalog made before Alembic came (tables, no ``alembic_version``) is stamped at the
  revision its tables match, then upgraded, its rows kept;
* a revision this code does not know (a newer scanet-node's) is refused, naming it.

Serve and any number of ``scanet-node worker`` processes may open one catalog at the same time:
the upgrade runs in one transaction that first takes a lock every opener waits on
(``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and reads the revision
again once it holds it. Alembic, handed a connection already in a transaction, leaves the commit
to us, so an upgrade that fails (or whose result does not match the models) changes nothing.

Read-only commands open the catalog with :func:`require_head`, which migrates nothing and asks
the administrator to run ``scanet-node db upgrade``.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from scanet_node.catalog.engine import create_catalog_engine
from scanet_node.catalog.models import Base
from scanet_node.errors import CatalogError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

logger = logging.getLogger(__name__)

#: The newest revision in migrations/versions/ (a test checks that the two agree).
HEAD_REVISION = "0006"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
#: The key of the PostgreSQL advisory lock that serialises schema changes on one database.
ADVISORY_LOCK_KEY = 0x5CA7E7_0DB_0001
#: For a catalog without ``alembic_version``: the table each revision added, newest first.
_FIRST_TABLES = (("0003", "purge_audit"), ("0002", "job"), ("0001", "study"))
_OPEN_HINT = "check [catalog] url or [node] data_dir"


@dataclass(frozen=True)
class SchemaState:
    """Where a catalog's schema stands.

    ``revision`` is the one recorded in ``alembic_version`` (None when none is); for a catalog
    without one, ``matches`` is the revision its tables match (None when it has no tables of
    ours: an empty database).
    """

    revision: str | None
    matches: str | None = None

    @property
    def is_head(self) -> bool:
        """Whether the catalog needs no upgrade."""
        return self.revision == HEAD_REVISION

    def describe(self) -> str:
        """The state in words, for the CLI and error messages."""
        if self.revision is not None:
            return f"revision {self.revision}"
        if self.matches is not None:
            return f"unversioned (made by an earlier scanet-node; its tables match {self.matches})"
        return "empty"


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def read_state(conn: Connection) -> SchemaState:
    """Read the catalog's revision, or the revision its tables match when it has none."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        rows = [str(r[0]) for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
        if len(rows) > 1:
            raise CatalogError(
                f"the catalog records several schema revisions ({', '.join(sorted(rows))}); "
                "scanet-node has one line of revisions: restore it from a backup"
            )
        if rows:
            return SchemaState(rows[0])
    return SchemaState(None, next((rev for rev, table in _FIRST_TABLES if table in tables), None))


def schema_gaps(conn: Connection) -> list[str]:
    """The tables and columns of the models that the database lacks (``table`` or ``t.col``)."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    gaps: list[str] = []
    for table in Base.metadata.sorted_tables:
        if table.name not in present:
            gaps.append(table.name)
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        gaps += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return gaps


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


def _script(config: Config) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config)
    if script.get_current_head() != HEAD_REVISION:
        raise RuntimeError(
            f"catalog/schema.py HEAD_REVISION {HEAD_REVISION} is not the newest revision in "
            f"{MIGRATIONS_DIR / 'versions'} ({script.get_current_head()})"
        )
    return script


def _refuse_unknown(script: ScriptDirectory, state: SchemaState, url: str) -> None:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    if state.revision is None:
        return
    try:
        script.get_revision(state.revision)
    except (CommandError, RevisionError):
        raise CatalogError(
            f"the catalog {url} is at schema revision {state.revision}, which this scanet-node "
            f"(newest revision {HEAD_REVISION}) does not know: a newer scanet-node made or "
            f"upgraded it; run that version, or {_OPEN_HINT}"
        ) from None


def _read(engine: Engine) -> tuple[SchemaState, list[str]]:
    """The state, and the gaps when at head, in one read-only transaction."""
    with engine.connect() as conn:
        conn.execution_options(readonly=True)  # SQLite: a plain BEGIN, no write lock
        state = read_state(conn)
        return state, schema_gaps(conn) if state.is_head else []


def _refuse_gaps(gaps: list[str], url: str) -> None:
    if gaps:
        raise CatalogError(
            f"the catalog {url} is at schema revision {HEAD_REVISION} but lacks "
            f"{', '.join(gaps)}: it was altered outside scanet-node; restore it from a backup, "
            f"or {_OPEN_HINT}"
        )


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One write transaction that holds the catalog's schema lock until it ends."""
    # On SQLite the engine begins write transactions with BEGIN IMMEDIATE (store.py): the
    # database's write lock, waited for up to the busy timeout.
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        yield conn


def upgrade_schema(engine: Engine, url: str) -> tuple[SchemaState, SchemaState]:
    """Bring the catalog to the head revision; return its state before and after.

    Parameters
    ----------
    engine
        The catalog's engine (engine.create_catalog_engine).
    url
        The catalog's URL as shown in messages (no password).

    Raises
    ------
    CatalogError
        An unknown revision, tables that match no scanet-node schema, or a hand-altered one.
    """
    with _sqlite_file_lock(engine):
        return _upgrade(engine, url)


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """On a SQLite file, let one process at a time open and upgrade it: an exclusive ``flock``
    of the folder that holds it.

    Several processes creating one catalog at once would otherwise race on its first
    connection: switching a new database to WAL (store.py) needs SQLite's exclusive lock and
    can answer "database is locked" at once, without waiting, while another process migrates.
    The folder, not the database file: closing any descriptor of the database file would drop
    every POSIX lock SQLite holds on it in this process (fcntl semantics).
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    fd = os.open(Path(str(database)).resolve().parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _upgrade(engine: Engine, url: str) -> tuple[SchemaState, SchemaState]:
    before, gaps = _read(engine)
    if before.is_head:
        _refuse_gaps(gaps, url)
        return before, before
    from alembic.util import CommandError

    try:
        with _locked(engine) as conn:
            before = read_state(conn)  # again: another process may have upgraded meanwhile
            if before.is_head:
                _refuse_gaps(schema_gaps(conn), url)
                return before, before
            config = _config(conn)
            _refuse_unknown(_script(config), before, url)
            from alembic import command

            if before.revision is None and before.matches is not None:
                logger.info(
                    "catalog %s has no schema revision; its tables match %s: stamping it so",
                    url,
                    before.matches,
                )
                command.stamp(config, before.matches)
            command.upgrade(config, "head")
            gaps = schema_gaps(conn)
            if gaps:  # raising here rolls the stamp and the upgrade back
                raise CatalogError(
                    f"the catalog {url} ({before.describe()}) matches no scanet-node schema: "
                    f"upgraded to {HEAD_REVISION} it would still lack {', '.join(gaps)}; "
                    f"nothing was changed ({_OPEN_HINT})"
                )
    except CommandError as exc:
        raise CatalogError(f"cannot upgrade the catalog {url}: {exc}") from exc
    after = SchemaState(HEAD_REVISION)
    logger.info("catalog %s: schema upgraded from %s to %s", url, before.describe(), HEAD_REVISION)
    return before, after


def require_head(engine: Engine, url: str) -> None:
    """Refuse a catalog that is not at the head revision; migrate nothing (read-only commands)."""
    state, gaps = _read(engine)
    if state.is_head:
        _refuse_gaps(gaps, url)
        return
    if state.revision is not None:
        with engine.connect() as conn:
            _refuse_unknown(_script(_config(conn)), state, url)
    if state.revision is None and state.matches is None:
        raise CatalogError(
            f"the catalog {url} is empty: start scanet-node serve, or run "
            f"scanet-node db upgrade, to create it ({_OPEN_HINT})"
        )
    raise CatalogError(
        f"the catalog {url} is {state.describe()}, this scanet-node needs revision "
        f"{HEAD_REVISION}: run scanet-node db upgrade (serve and worker upgrade it too)"
    )


def downgrade_schema(engine: Engine, revision: str, url: str) -> SchemaState:
    """Take the catalog down to ``revision`` (``"base"``: no tables), under the schema lock.

    Every downgrade drops what its upgrade added, rows included: for tests and for going back
    to an earlier scanet-node after a backup.
    """
    from alembic import command
    from alembic.util import CommandError

    try:
        with _locked(engine) as conn:
            config = _config(conn)
            _refuse_unknown(_script(config), read_state(conn), url)
            command.downgrade(config, revision)
            state = read_state(conn)
    except CommandError as exc:
        raise CatalogError(f"cannot downgrade the catalog {url}: {exc}") from exc
    logger.info("catalog %s: schema downgraded to %s", url, state.describe())
    return state


def sqlite_file_missing(url: str) -> str | None:
    """The path of a SQLite catalog file that does not exist, else None."""
    parsed = make_url(url)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(str(parsed.database)).is_file()
    ):
        return str(parsed.database)
    return None


def upgrade_catalog(url: str) -> str:
    """``scanet-node db upgrade``: bring the catalog at ``url`` to head; say from what to what."""
    shown = display_url(url)
    try:
        engine = create_catalog_engine(url)
        try:
            before, after = upgrade_schema(engine, shown)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as exc:
        raise CatalogError(f"cannot open catalog {shown}: {exc}") from exc
    if before.is_head:
        return f"catalog {shown}: at revision {HEAD_REVISION} (head), nothing to do"
    return f"catalog {shown}: {before.describe()} -> revision {after.revision} (head)"


def current_catalog(url: str) -> tuple[str, bool]:
    """``scanet-node db current``: the catalog's revision in words, and whether it is head."""
    shown = display_url(url)
    missing = sqlite_file_missing(url)
    if missing:
        raise CatalogError(f"no catalog at {missing} ({_OPEN_HINT})")
    try:
        engine = create_catalog_engine(url)
        try:
            state, _ = _read(engine)
            if not state.is_head and state.revision is not None:
                with engine.connect() as conn:
                    _refuse_unknown(_script(_config(conn)), state, shown)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as exc:
        raise CatalogError(f"cannot open catalog {shown}: {exc}") from exc
    if state.is_head:
        return f"catalog {shown}: revision {HEAD_REVISION} (head)", True
    return (
        f"catalog {shown}: {state.describe()}, not head ({HEAD_REVISION}): "
        "run scanet-node db upgrade",
        False,
    )
