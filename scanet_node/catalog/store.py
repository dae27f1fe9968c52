"""The catalog operations other stages call; the same code on SQLite and PostgreSQL.

Each operation is one committed transaction. On SQLite the database runs in WAL
mode with ``synchronous=FULL``, so a committed row survives a power cut, and write
transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the
busy timeout instead of failing on a lock upgrade. The other catalog modules (jobs.py,
overview.py, retention.py) run their queries in the sessions of :meth:`Catalog.read` and
:meth:`Catalog.write`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, NoResultFound, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from scanet_node.catalog.engine import create_catalog_engine
from scanet_node.catalog.models import Instance, Series, SeriesState, Study
from scanet_node.catalog.schema import require_head, sqlite_file_missing, upgrade_schema
from scanet_node.errors import CatalogError

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time as naive UTC, the catalog's convention."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class InstanceRecord:
    """What ingest knows of one stored instance; the input of :meth:`Catalog.record_instance`."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    received_at: datetime
    calling_aet: str | None = None
    patient_key: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    image_type: str | None = None
    contrast_agent: str | None = None
    slice_thickness: float | None = None
    body_part_examined: str | None = None
    instance_number: int | None = None


@dataclass(frozen=True)
class RecordOutcome:
    """What recording an instance changed, for the study-event log lines."""

    new_instance: bool
    new_study: bool
    new_series: bool
    reopened_series: bool
    conflict: str | None = None


@dataclass(frozen=True)
class SeriesSummary:
    """A series as the operator CLI and later stages see it."""

    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    image_type: str | None
    contrast_agent: str | None
    slice_thickness: float | None
    sop_class_uid: str | None
    num_instances: int
    state: str
    calling_aet: str | None
    first_received_at: datetime
    last_received_at: datetime
    settled_at: datetime | None
    role: str | None = None
    role_reason: str | None = None


@dataclass(frozen=True)
class StudySummary:
    """A study with its series."""

    study_instance_uid: str
    study_date: str | None
    study_description: str | None
    num_instances: int
    first_received_at: datetime
    last_received_at: datetime
    series: list[SeriesSummary] = field(default_factory=list)

    @classmethod
    def from_row(cls, study: Study) -> StudySummary:
        """The study as the row holds it, with its series (loads ``series``)."""
        return cls(
            study_instance_uid=study.study_instance_uid,
            study_date=study.study_date,
            study_description=study.study_description,
            num_instances=study.num_instances,
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            series=[
                SeriesSummary(
                    series_instance_uid=s.series_instance_uid,
                    modality=s.modality,
                    series_number=s.series_number,
                    series_description=s.series_description,
                    image_type=s.image_type,
                    contrast_agent=s.contrast_agent,
                    slice_thickness=s.slice_thickness,
                    sop_class_uid=s.sop_class_uid,
                    num_instances=s.num_instances,
                    state=str(s.state),
                    calling_aet=s.calling_aet,
                    first_received_at=s.first_received_at,
                    last_received_at=s.last_received_at,
                    settled_at=s.settled_at,
                    role=s.role,
                    role_reason=s.role_reason,
                )
                for s in study.series
            ],
        )


class SettleReason(enum.StrEnum):
    """Why the settle sweep settled a series (:attr:`SettledSeries.why`)."""

    #: Its sender was done with it (:meth:`Catalog.mark_series_released`), then the grace
    #: passed.
    RELEASED = "released"
    #: Nothing was received for ``series_settle_seconds``.
    QUIET = "quiet"


@dataclass(frozen=True)
class SettledSeries:
    """A series the settle sweep has just marked settled."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    num_instances: int
    why: SettleReason = SettleReason.QUIET


class _Conflict(Exception):
    """Rolls back a record_instance transaction that would refile an instance."""


class _Vanished(Exception):
    """Rolls back a record_instance transaction whose rows a retention purge just deleted."""


class Catalog:
    """The catalog: a database holding studies, series and instances.

    Parameters
    ----------
    url
        A SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
    create
        Bring the schema to the head revision (the default: the node owns its schema; see
        catalog/schema.py). False migrates nothing and refuses a catalog that is not at head
        (the read-only commands).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        missing = None if create else sqlite_file_missing(url)
        if missing:
            raise CatalogError(f"no catalog at {missing} (check [node] data_dir or [catalog] url)")
        try:
            self.engine = create_catalog_engine(url)
            if create:
                upgrade_schema(self.engine, self.display_url)
            else:
                require_head(self.engine, self.display_url)
        except (SQLAlchemyError, OSError) as exc:
            raise CatalogError(f"cannot open catalog {self.display_url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._dialect = self.engine.dialect.name
        self._prepare_statements()

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one write transaction, committed when the block ends (rolled back if
        it raises).

        On SQLite the transaction starts with ``BEGIN IMMEDIATE``: it takes the database's
        write lock at once, so writers run one at a time (a second waits up to the busy
        timeout, :data:`~scanet_node.catalog.engine.SQLITE_BUSY_TIMEOUT_MS`) and what a
        transaction reads stays true until it commits. On PostgreSQL it is READ COMMITTED:
        other writers run alongside, so a query that decides on rows it then changes locks
        them (``with_for_update``; ``skip_locked`` to pass over rows another worker holds).
        Objects stay usable after the commit (``expire_on_commit=False``).
        """
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries only, rolled back when the block ends: nothing written in it
        is kept (use :meth:`write` for any change).

        On SQLite it starts with a plain ``BEGIN`` and takes no write lock: its queries read
        one snapshot, taken at the first, while writers go on. On PostgreSQL (READ COMMITTED)
        each query sees what was committed when that query started.
        """
        with self._sessions() as session:
            session.connection(execution_options={"readonly": True})
            yield session

    def _insert(self, table: Any) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _greatest(self, column: Any, value: datetime) -> Any:
        if self._dialect == "sqlite":
            return func.max(column, value)
        return func.greatest(column, value)

    def record_instance(self, rec: InstanceRecord) -> RecordOutcome:
        """File one stored instance: upsert its study and series, insert or refresh the row.

        A duplicate SOP Instance UID in the same series refreshes the row and keeps
        the counts. One in another series is refused (``conflict`` says why) and
        nothing changes.
        """
        try:
            try:
                return self._record_instance(rec)
            except (IntegrityError, NoResultFound, _Vanished):
                # Two associations filed the same new instance at once (PostgreSQL,
                # READ COMMITTED): the second sees the first's row when it tries again. Or a
                # retention purge deleted the study's rows meanwhile: filed again, it is a
                # new study.
                return self._record_instance(rec)
        except _Conflict as exc:
            return RecordOutcome(False, False, False, False, conflict=str(exc))

    def _prepare_statements(self) -> None:
        # Built once: executing a prepared Core statement with a parameter dict
        # costs a fraction of building it anew for every instance.
        def p(name: str) -> Any:
            return bindparam(f"p_{name}")

        self._st_insert_study = (
            self._insert(Study)
            .values(
                study_instance_uid=p("study_uid"),
                patient_key=p("patient_key"),
                study_date=p("study_date"),
                study_description=p("study_description"),
                accession_number=p("accession_number"),
                num_instances=0,
                first_received_at=p("at"),
                last_received_at=p("at"),
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
            .returning(Study.id)
        )
        self._st_study_id = select(Study.id).where(Study.study_instance_uid == p("study_uid"))
        self._st_insert_series = (
            self._insert(Series)
            .values(
                study_id=p("study_id"),
                series_instance_uid=p("series_uid"),
                modality=p("modality"),
                sop_class_uid=p("sop_class_uid"),
                series_number=p("series_number"),
                series_description=p("series_description"),
                image_type=p("image_type"),
                contrast_agent=p("contrast_agent"),
                slice_thickness=p("slice_thickness"),
                body_part_examined=p("body_part_examined"),
                calling_aet=p("calling_aet"),
                num_instances=0,
                state=SeriesState.RECEIVING,
                first_received_at=p("at"),
                last_received_at=p("at"),
            )
            .on_conflict_do_nothing(index_elements=["series_instance_uid"])
            .returning(Series.id)
        )
        self._st_series = select(Series.id, Series.study_id, Series.state).where(
            Series.series_instance_uid == p("series_uid")
        )
        self._st_instance = select(Instance.id, Instance.series_id).where(
            Instance.sop_instance_uid == p("sop_uid")
        )
        instance_values = {
            "sop_class_uid": p("sop_class_uid"),
            "transfer_syntax_uid": p("transfer_syntax_uid"),
            "instance_number": p("instance_number"),
            "path": p("path"),
            "size_bytes": p("size_bytes"),
            "calling_aet": p("calling_aet"),
            "received_at": p("at"),
        }
        self._st_insert_instance = insert(Instance).values(
            series_id=p("series_id"), sop_instance_uid=p("sop_uid"), **instance_values
        )
        self._st_update_instance = (
            update(Instance).where(Instance.id == p("instance_id")).values(**instance_values)
        )
        self._st_touch_series = (
            update(Series)
            .where(Series.id == p("series_id"))
            .values(
                num_instances=Series.num_instances + p("added"),
                last_received_at=self._greatest(Series.last_received_at, p("at")),
                state=SeriesState.RECEIVING,
                settled_at=None,
                released_at=None,
            )
        )
        self._st_touch_study = (
            update(Study)
            .where(Study.id == p("study_id"))
            .values(
                num_instances=Study.num_instances + p("added"),
                last_received_at=self._greatest(Study.last_received_at, p("at")),
            )
        )

    def _record_instance(self, rec: InstanceRecord) -> RecordOutcome:
        params: dict[str, Any] = {
            "p_study_uid": rec.study_instance_uid,
            "p_series_uid": rec.series_instance_uid,
            "p_sop_uid": rec.sop_instance_uid,
            "p_patient_key": rec.patient_key,
            "p_study_date": rec.study_date,
            "p_study_description": rec.study_description,
            "p_accession_number": rec.accession_number,
            "p_at": rec.received_at,
            "p_modality": rec.modality,
            "p_sop_class_uid": rec.sop_class_uid,
            "p_series_number": rec.series_number,
            "p_series_description": rec.series_description,
            "p_image_type": rec.image_type,
            "p_contrast_agent": rec.contrast_agent,
            "p_slice_thickness": rec.slice_thickness,
            "p_body_part_examined": rec.body_part_examined,
            "p_calling_aet": rec.calling_aet,
            "p_transfer_syntax_uid": rec.transfer_syntax_uid,
            "p_instance_number": rec.instance_number,
            "p_path": rec.path,
            "p_size_bytes": rec.size_bytes,
        }
        with self.engine.begin() as conn:
            # INSERT ... ON CONFLICT DO NOTHING RETURNING id gives a row only when
            # it inserted (rowcount is not reliable for this on every driver).
            inserted = conn.execute(self._st_insert_study, params).first()
            new_study = inserted is not None
            params["p_study_id"] = (
                inserted[0]
                if inserted is not None
                else conn.execute(self._st_study_id, params).scalar_one()
            )
            inserted = conn.execute(self._st_insert_series, params).first()
            new_series = inserted is not None
            if inserted is not None:
                series_id, series_state = inserted[0], SeriesState.RECEIVING
            else:
                series_id, series_study_id, series_state = conn.execute(
                    self._st_series, params
                ).one()
                if series_study_id != params["p_study_id"]:
                    raise _Conflict("Series Instance UID belongs to another study")
            params["p_series_id"] = series_id
            existing = conn.execute(self._st_instance, params).one_or_none()
            if existing is not None and existing.series_id != series_id:
                raise _Conflict("SOP Instance UID belongs to another series")
            if existing is None:
                conn.execute(self._st_insert_instance, params)
            else:
                refreshed = conn.execute(
                    self._st_update_instance, {**params, "p_instance_id": existing.id}
                )
                if refreshed.rowcount != 1:
                    raise _Vanished
            params["p_added"] = int(existing is None)
            for touch in (self._st_touch_series, self._st_touch_study):
                # On PostgreSQL a purge may delete rows read above before these run: the
                # instance must not be acknowledged with no row to show for it.
                if conn.execute(touch, params).rowcount != 1:
                    raise _Vanished
        reopened = series_state == SeriesState.SETTLED
        return RecordOutcome(existing is None, new_study, new_series, reopened)

    def mark_series_released(self, series_uids: Sequence[str], at: datetime | None = None) -> int:
        """Note that a sender is done with these series (released, or moved on); return how
        many receiving series were marked. The next instance of a series clears the mark."""
        if not series_uids:
            return 0
        at = at or utcnow()
        with self.write() as session:
            result = session.execute(
                update(Series)
                .where(
                    Series.series_instance_uid.in_(list(series_uids)),
                    Series.state == SeriesState.RECEIVING,
                    Series.last_received_at <= at,
                )
                .values(released_at=at)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def settle_series(
        self,
        settle_seconds: float,
        now: datetime | None = None,
        *,
        release_grace_seconds: float | None = None,
    ) -> list[SettledSeries]:
        """Mark settled every receiving series quiet for ``settle_seconds``, or released by its
        sender (:meth:`mark_series_released`) ``release_grace_seconds`` ago; return them."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=settle_seconds)
        due = Series.last_received_at <= cutoff
        if release_grace_seconds is not None:
            due = due | (
                Series.released_at.is_not(None)
                & (Series.released_at <= now - timedelta(seconds=release_grace_seconds))
            )
        with self.write() as session:
            rows = session.execute(
                select(
                    Series.id,
                    Study.study_instance_uid,
                    Series.series_instance_uid,
                    Series.modality,
                    Series.num_instances,
                    Series.last_received_at,
                )
                .join(Study, Study.id == Series.study_id)
                .where(Series.state == SeriesState.RECEIVING, due)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                session.execute(
                    update(Series)
                    .where(Series.id.in_([r.id for r in rows]))
                    .values(state=SeriesState.SETTLED, settled_at=now, released_at=None)
                )
        return [
            SettledSeries(
                r[1],
                r[2],
                r[3],
                r[4],
                SettleReason.QUIET if r[5] <= cutoff else SettleReason.RELEASED,
            )
            for r in rows
        ]

    def list_studies(self) -> list[StudySummary]:
        """Every study with its series, most recently received first."""
        with self.read() as session:
            studies = session.scalars(
                select(Study)
                .options(selectinload(Study.series))
                .order_by(Study.last_received_at.desc())
            ).all()
            return [StudySummary.from_row(s) for s in studies]

    def get_study(self, study_instance_uid: str) -> StudySummary | None:
        """One study with its series, or None."""
        with self.read() as session:
            study = session.scalars(
                select(Study)
                .options(selectinload(Study.series))
                .where(Study.study_instance_uid == study_instance_uid)
            ).one_or_none()
            return None if study is None else StudySummary.from_row(study)

    def instance_paths(self, series_instance_uid: str) -> list[str]:
        """Spool-relative paths of a series' instances, in the order they were filed."""
        with self.read() as session:
            return list(
                session.scalars(
                    select(Instance.path)
                    .join(Series, Series.id == Instance.series_id)
                    .where(Series.series_instance_uid == series_instance_uid)
                    .order_by(Instance.id)
                )
            )

    def count_instances(self) -> int:
        """How many instances the catalog holds."""
        with self.read() as session:
            return session.scalar(select(func.count(Instance.id))) or 0
