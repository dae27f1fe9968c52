"""Retention in the catalog: the rows the purge decision reads, and the purge of studies.

The decision itself is pipeline/retention.py's; here are the reads it needs
(:meth:`RetentionStore.state`, :meth:`RetentionStore.contents`) and the purge
(:meth:`RetentionStore.purge`): in one transaction, after checking that nothing arrived and
no analysis started since the decision, a de-identified :class:`PurgeAudit` row per study is
written and every row that names the study is deleted: its delivery attempts, deliveries and
jobs, its instances, series and the study itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from scanet_node.catalog.engine import SQLITE_BUSY_TIMEOUT_MS
from scanet_node.catalog.models import (
    ACTIVE_JOB_STATUSES,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Instance,
    Job,
    PurgeAudit,
    Series,
    SeriesState,
    Study,
)
from scanet_node.catalog.monitoring import deidentify
from scanet_node.catalog.store import Catalog, utcnow

logger = logging.getLogger(__name__)

CHECKPOINT_BUSY_TIMEOUT_MS = 2000
#: The status :class:`RetentionJob` gives a pending delivery that a worker is sending right now.
SENDING = "sending"


@dataclass(frozen=True)
class RetentionStudy:
    """A study as the purge decision sees it.

    ``pending`` is true while a series of the study is still receiving, or has settled
    without a role yet (the trigger has not decided on it).
    """

    study_instance_uid: str
    last_received_at: datetime
    pending: bool = False


@dataclass(frozen=True)
class RetentionJob:
    """A job as the purge decision sees it: where it is filed, what it read, how it ended.

    ``input_study_uids`` are the catalogued studies of its NCCT and CTA series (the NCCT
    may sit in another study of the patient); ``deliveries`` the status of each delivery,
    ``"sending"`` for a pending one a worker holds the lease of right now.
    """

    id: int
    study_instance_uid: str
    status: str
    input_study_uids: frozenset[str] = frozenset()
    deliveries: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudyContents:
    """What a purge deletes on disk for one study: its instance files and results folders."""

    study_instance_uid: str
    last_received_at: datetime
    #: Spool-relative paths, as the instance rows hold them.
    instance_paths: list[str]
    #: ``results_dir`` of each job filed in the study that has one.
    results_dirs: list[str]


@dataclass(frozen=True)
class StudyToPurge:
    """One study of a purge: as decided (``last_received_at``) and what deleting it freed."""

    study_instance_uid: str
    last_received_at: datetime
    bytes_freed: int


@dataclass(frozen=True)
class AuditInfo:
    """A purge_audit row: what remains of a purged study (no UIDs, no patient key)."""

    id: int
    purged_at: datetime
    rule: str
    first_received_at: datetime
    last_received_at: datetime
    num_series: int
    num_instances: int
    bytes_freed: int
    jobs: int
    outcome: str | None
    deliveries_sent: int
    deliveries_failed: int

    @classmethod
    def from_row(cls, row: PurgeAudit) -> AuditInfo:
        """The audit row as a plain value."""
        return cls(
            id=row.id,
            purged_at=row.purged_at,
            rule=row.rule,
            first_received_at=row.first_received_at,
            last_received_at=row.last_received_at,
            num_series=row.num_series,
            num_instances=row.num_instances,
            bytes_freed=row.bytes_freed,
            jobs=row.jobs,
            outcome=row.outcome,
            deliveries_sent=row.deliveries_sent,
            deliveries_failed=row.deliveries_failed,
        )


class RetentionStore:
    """The purge decision's reads and the purge itself, in the catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def state(
        self, study_uids: Collection[str] | None = None
    ) -> tuple[list[RetentionStudy], list[RetentionJob]]:
        """Studies and jobs for the purge decision: all of them, or those of ``study_uids``.

        Restricted to ``study_uids``, the jobs are those filed in or reading from one of
        them, and the studies those given plus every study these jobs touch, so the
        decision sees whole groups of linked studies.
        """
        ncct, ncct_study = aliased(Series), aliased(Study)
        cta, cta_study = aliased(Series), aliased(Study)
        jobs_query = (
            select(
                Job.id,
                Job.study_instance_uid,
                Job.status,
                ncct_study.study_instance_uid,
                cta_study.study_instance_uid,
            )
            .outerjoin(ncct, ncct.series_instance_uid == Job.ncct_series_uid)
            .outerjoin(ncct_study, ncct_study.id == ncct.study_id)
            .outerjoin(cta, cta.series_instance_uid == Job.cta_series_uid)
            .outerjoin(cta_study, cta_study.id == cta.study_id)
        )
        if study_uids is not None:
            wanted = list(study_uids)
            series_uids = (
                select(Series.series_instance_uid)
                .join(Study, Study.id == Series.study_id)
                .where(Study.study_instance_uid.in_(wanted))
            )
            jobs_query = jobs_query.where(
                or_(
                    Job.study_instance_uid.in_(wanted),
                    Job.ncct_series_uid.in_(series_uids),
                    Job.cta_series_uid.in_(series_uids),
                )
            )
        with self.catalog.read() as session:
            job_rows = session.execute(jobs_query).all()
            job_ids = [r[0] for r in job_rows]
            deliveries: dict[int, list[str]] = defaultdict(list)
            if job_ids:
                now = utcnow()
                for job_id, status, lease in session.execute(
                    select(Delivery.job_id, Delivery.status, Delivery.lease_expires_at)
                    .where(Delivery.job_id.in_(job_ids))
                    .order_by(Delivery.id)
                ):
                    leased = status == DeliveryStatus.PENDING and lease is not None and lease > now
                    deliveries[job_id].append(SENDING if leased else str(status))
            jobs = [
                RetentionJob(
                    id=r[0],
                    study_instance_uid=r[1],
                    status=str(r[2]),
                    input_study_uids=frozenset(u for u in (r[3], r[4]) if u is not None),
                    deliveries=tuple(deliveries.get(r[0], ())),
                )
                for r in job_rows
            ]
            pending_series = or_(Series.state == SeriesState.RECEIVING, Series.role.is_(None))
            pending = select(Series.study_id).where(pending_series).distinct()
            studies_query = select(
                Study.study_instance_uid,
                Study.last_received_at,
                Study.id.in_(pending),
            )
            if study_uids is not None:
                touched = set(study_uids)
                for job in jobs:
                    touched.add(job.study_instance_uid)
                    touched.update(job.input_study_uids)
                studies_query = studies_query.where(Study.study_instance_uid.in_(sorted(touched)))
            studies = [
                RetentionStudy(uid, last, bool(is_pending))
                for uid, last, is_pending in session.execute(studies_query)
            ]
        return studies, jobs

    def contents(self, study_uids: Collection[str]) -> list[StudyContents]:
        """The instance paths and results folders of each of ``study_uids`` still catalogued."""
        wanted = list(study_uids)
        with self.catalog.read() as session:
            studies = session.execute(
                select(Study.id, Study.study_instance_uid, Study.last_received_at).where(
                    Study.study_instance_uid.in_(wanted)
                )
            ).all()
            paths: dict[int, list[str]] = defaultdict(list)
            for study_id, path in session.execute(
                select(Series.study_id, Instance.path)
                .join(Series, Series.id == Instance.series_id)
                .where(Series.study_id.in_([s[0] for s in studies]))
                .order_by(Instance.id)
            ):
                paths[study_id].append(path)
            results: dict[str, list[str]] = defaultdict(list)
            for study_uid, folder in session.execute(
                select(Job.study_instance_uid, Job.results_dir)
                .where(Job.study_instance_uid.in_(wanted), Job.results_dir.is_not(None))
                .order_by(Job.id)
            ):
                if folder:
                    results[study_uid].append(folder)
        return [
            StudyContents(uid, last, paths.get(study_id, []), results.get(uid, []))
            for study_id, uid, last in studies
        ]

    def purge(
        self, studies: Sequence[StudyToPurge], rule: str, now: datetime
    ) -> list[AuditInfo] | None:
        """Delete ``studies`` and every row naming them, with one audit row each: one transaction.

        Nothing changes, and None is returned, when a study is gone, received an instance
        since the decision (``last_received_at`` differs), is now read or filed in by a
        queued or running job, or has results being sent; the next sweep decides again.
        """
        uids = [s.study_instance_uid for s in studies]
        with self.catalog.write() as session:
            found = session.execute(
                select(Study.id, Study.study_instance_uid, Study.last_received_at)
                .where(Study.study_instance_uid.in_(uids))
                .with_for_update()
            ).all()
            last_by_uid = {uid: last for _, uid, last in found}
            for study in studies:
                if last_by_uid.get(study.study_instance_uid) != study.last_received_at:
                    return None
            study_ids = [study_id for study_id, _, _ in found]
            series_uids = select(Series.series_instance_uid).where(Series.study_id.in_(study_ids))
            active = session.scalar(
                select(func.count(Job.id)).where(
                    Job.status.in_(ACTIVE_JOB_STATUSES),
                    or_(
                        Job.study_instance_uid.in_(uids),
                        Job.ncct_series_uid.in_(series_uids),
                        Job.cta_series_uid.in_(series_uids),
                    ),
                )
            )
            job_ids = select(Job.id).where(Job.study_instance_uid.in_(uids))
            sending = session.scalar(
                select(func.count(Delivery.id)).where(
                    Delivery.job_id.in_(job_ids),
                    Delivery.status == DeliveryStatus.PENDING,
                    Delivery.lease_expires_at > utcnow(),
                )
            )
            if active or sending:
                return None
            audits = [
                self._audit(session, study_id, uid, rule, now, studies)
                for study_id, uid, _ in found
            ]
            session.add_all(audits)
            deidentify(session, uids)  # the prediction, descriptors and grade stay
            self._delete_rows(session, uids, study_ids)
            session.flush()
            return [AuditInfo.from_row(a) for a in audits]

    @staticmethod
    def _audit(
        session: Session,
        study_id: int,
        study_uid: str,
        rule: str,
        now: datetime,
        studies: Sequence[StudyToPurge],
    ) -> PurgeAudit:
        study = session.get_one(Study, study_id)
        num_series = session.scalar(
            select(func.count(Series.id)).where(Series.study_id == study_id)
        )
        num_instances = session.scalar(
            select(func.count(Instance.id))
            .join(Series, Series.id == Instance.series_id)
            .where(Series.study_id == study_id)
        )
        jobs = session.execute(
            select(Job.id, Job.status, Job.outcome)
            .where(Job.study_instance_uid == study_uid)
            .order_by(Job.id.desc())
        ).all()
        outcome: str | None = None
        sent = failed = 0
        if jobs:
            newest_id, status, job_outcome = jobs[0]
            outcome = job_outcome or str(status)
            for (delivery_status,) in session.execute(
                select(Delivery.status).where(Delivery.job_id == newest_id)
            ):
                # A delivery not sent by now is given up: the results it would send are gone.
                if delivery_status == DeliveryStatus.SENT:
                    sent += 1
                else:
                    failed += 1
        freed = sum(s.bytes_freed for s in studies if s.study_instance_uid == study_uid)
        return PurgeAudit(
            purged_at=now,
            rule=rule,
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            num_series=num_series or 0,
            num_instances=num_instances or 0,
            bytes_freed=freed,
            jobs=len(jobs),
            outcome=outcome,
            deliveries_sent=sent,
            deliveries_failed=failed,
        )

    @staticmethod
    def _delete_rows(session: Session, uids: list[str], study_ids: list[int]) -> None:
        job_ids = select(Job.id).where(Job.study_instance_uid.in_(uids)).scalar_subquery()
        delivery_ids = select(Delivery.id).where(Delivery.job_id.in_(job_ids)).scalar_subquery()
        session.execute(
            delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(delivery_ids))
        )
        session.execute(delete(Delivery).where(Delivery.job_id.in_(job_ids)))
        # An amendment names the job it amends; unlink first so the jobs go in any order.
        session.execute(
            update(Job).where(Job.supersedes_id.in_(job_ids)).values(supersedes_id=None)
        )
        session.execute(delete(Job).where(Job.study_instance_uid.in_(uids)))
        series_ids = select(Series.id).where(Series.study_id.in_(study_ids)).scalar_subquery()
        session.execute(delete(Instance).where(Instance.series_id.in_(series_ids)))
        session.execute(delete(Series).where(Series.study_id.in_(study_ids)))
        session.execute(delete(Study).where(Study.id.in_(study_ids)))

    def audits(self, limit: int | None = None) -> list[AuditInfo]:
        """Purge audit rows, newest first."""
        with self.catalog.read() as session:
            query = select(PurgeAudit).order_by(PurgeAudit.id.desc())
            if limit is not None:
                query = query.limit(limit)
            return [AuditInfo.from_row(a) for a in session.scalars(query)]

    def checkpoint(self) -> bool:
        """On SQLite, fold the WAL into the database file and truncate it; True if it did.

        With ``secure_delete`` the purged rows are zeroed in the pages that held them, but
        older copies of those pages stay in the WAL until a checkpoint rewrites the file.
        It waits up to two seconds for readers and gives up quietly if they stay (the
        next sweep's checkpoint, or SQLite's own, folds them in).
        """
        if self.catalog.engine.dialect.name != "sqlite":
            return False
        # Outside any transaction: the raw connection runs in autocommit (engine.py).
        raw = self.catalog.engine.raw_connection()
        try:
            cursor = raw.cursor()
            # It holds off writers while it waits for readers: wait briefly, not the
            # minute a writer waits, so the listener never stalls on it.
            cursor.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_TIMEOUT_MS}")
            try:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                row = cursor.fetchone()
                busy = bool(row and row[0])
            finally:
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.close()
        finally:
            raw.close()
        if busy:
            logger.debug("WAL checkpoint after the purge was blocked by readers")
        return not busy
