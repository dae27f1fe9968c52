"""Read-only views of the catalog for the admin page and ``/metrics``.

Each method is one read transaction with bounded results (LIMITs, or aggregates), and
returns plain dataclasses built from the same converters as the rest of the catalog
(:meth:`StudySummary.from_row`, :meth:`JobInfo.from_row`, :meth:`DeliveryInfo.from_row`), so
the page shows what the CLI shows. Nothing here reads patient names or IDs; the catalog does not
hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, selectinload

from scanet_node.catalog.jobs import DeliveryInfo, JobInfo
from scanet_node.catalog.models import (
    Delivery,
    DeliveryStatus,
    Instance,
    Job,
    JobOutcome,
    JobStatus,
    PurgeAudit,
    Series,
    Study,
)
from scanet_node.catalog.store import Catalog, StudySummary


@dataclass(frozen=True)
class Counts:
    """What the catalog holds, for the overview page."""

    studies: int
    series: int
    instances: int
    #: Bytes of the instances filed in the spool (the catalog's sum of their sizes).
    spool_bytes: int
    jobs: dict[str, int]
    deliveries: dict[str, int]
    #: Deliveries by (destination name, status).
    deliveries_by_destination: dict[tuple[str, str], int]
    #: Lease owners (``host:pid``) of the running jobs: the workers busy now, wherever they run.
    busy_workers: list[str]
    #: The model of the newest finished analysis (name, version, weights SHA-256 prefix).
    last_model: str | None
    #: Studies retention has purged (rows of ``purge_audit``).
    purged_studies: int


@dataclass(frozen=True)
class JobRow:
    """A job with a summary of its deliveries: a row of the admin page's job tables."""

    job: JobInfo
    #: Deliveries by status.
    deliveries: dict[str, int] = field(default_factory=dict)
    #: When the last destination acknowledged the results, once every delivery is sent.
    delivered_at: datetime | None = None

    @property
    def turnaround_seconds(self) -> float | None:
        """Last input instance received -> results delivered (or the job finished, when it
        has no destination); None while not there yet."""
        return _turnaround(
            self.job.inputs_received_at,
            self.job.finished_at if self.job.status == JobStatus.DONE else None,
            sum(self.deliveries.values()),
            self.deliveries.get(DeliveryStatus.SENT, 0),
            self.delivered_at,
        )


@dataclass(frozen=True)
class StudyRow:
    """A study with its series and its newest job: an entry of the admin page's studies."""

    study: StudySummary
    latest_job: JobInfo | None


@dataclass(frozen=True)
class StudyDetail:
    """A study with its series and its jobs, newest first."""

    study: StudySummary
    jobs: list[JobRow]


@dataclass(frozen=True)
class JobDetail:
    """A job with every delivery and every delivery attempt."""

    row: JobRow
    deliveries: list[DeliveryInfo]


@dataclass(frozen=True)
class MetricFigures:
    """The catalog's share of ``/metrics``: totals include purged studies (``purge_audit``)."""

    #: Studies by the outcome of their newest finished job.
    studies_analysed: dict[str, int]
    #: Jobs failed for good, by their reason.
    job_failures: dict[str, int]
    #: Studies retention purged whose last job had failed (their reasons are not kept).
    purged_failures: int
    #: Turnaround in seconds of every finished and delivered job still in the catalog.
    turnarounds: list[float]
    jobs: dict[str, int]
    deliveries: dict[str, int]
    #: Jobs queued (due or not) and deliveries pending.
    queued_jobs: int
    pending_deliveries: int
    spool_bytes: int


def _turnaround(
    received: datetime | None,
    finished: datetime | None,
    deliveries: int,
    sent: int,
    delivered_at: datetime | None,
) -> float | None:
    if received is None or finished is None:
        return None
    if deliveries == 0:
        return (finished - received).total_seconds()
    if sent < deliveries or delivered_at is None:
        return None
    return (delivered_at - received).total_seconds()


@dataclass(frozen=True)
class DeliveryState:
    """Where one delivery stands, without its attempts."""

    job_id: int
    destination: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_detail: str | None


@dataclass(frozen=True)
class Activity:
    """The studies received since a time, every job that concerns them, and those jobs'
    deliveries: what ``scanet-node doctor`` explains."""

    studies: list[StudySummary]
    #: The studies' own jobs, and jobs of other studies that used one of their series (an
    #: NCCT filed under its own study and paired with a CTA study's), oldest first.
    jobs: list[JobInfo]
    deliveries: list[DeliveryState]


class Overview:
    """Read-only queries over the catalog, for people and for Prometheus."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def ping(self) -> None:
        """A trivial query; raises when the database does not answer."""
        with self.catalog.read() as session:
            session.execute(select(1)).scalar_one()

    def counts(self) -> Counts:
        """Totals of studies, series, instances, jobs and deliveries."""
        with self.catalog.read() as session:
            studies = session.scalar(select(func.count(Study.id))) or 0
            series = session.scalar(select(func.count(Series.id))) or 0
            instances, spool_bytes = session.execute(
                select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
            ).one()
            by_destination = {
                (str(name), str(status)): int(n)
                for name, status, n in session.execute(
                    select(Delivery.destination, Delivery.status, func.count()).group_by(
                        Delivery.destination, Delivery.status
                    )
                )
            }
            deliveries: dict[str, int] = {}
            for (_, status), n in by_destination.items():
                deliveries[status] = deliveries.get(status, 0) + n
            busy = session.scalars(
                select(Job.lease_owner)
                .where(Job.status == JobStatus.RUNNING, Job.lease_owner.is_not(None))
                .distinct()
                .limit(100)
            ).all()
            last_model = session.scalar(
                select(Job.model)
                .where(Job.status == JobStatus.DONE, Job.model.is_not(None))
                .order_by(Job.id.desc())
                .limit(1)
            )
            return Counts(
                studies=studies,
                series=series,
                instances=int(instances),
                spool_bytes=int(spool_bytes),
                jobs=_job_counts(session),
                deliveries=deliveries,
                deliveries_by_destination=by_destination,
                busy_workers=sorted(str(b) for b in busy),
                last_model=last_model,
                purged_studies=session.scalar(select(func.count(PurgeAudit.id))) or 0,
            )

    def recent_studies(self, limit: int = 100) -> list[StudyRow]:
        """The most recently received studies with their series and newest job."""
        with self.catalog.read() as session:
            studies = session.scalars(
                select(Study)
                .options(selectinload(Study.series))
                .order_by(Study.last_received_at.desc(), Study.id.desc())
                .limit(limit)
            ).all()
            uids = [s.study_instance_uid for s in studies]
            newest = (
                select(func.max(Job.id))
                .where(Job.study_instance_uid.in_(uids))
                .group_by(Job.study_instance_uid)
            )
            latest = {
                j.study_instance_uid: JobInfo.from_row(j)
                for j in session.scalars(select(Job).where(Job.id.in_(newest)))
            }
            return [
                StudyRow(StudySummary.from_row(s), latest.get(s.study_instance_uid))
                for s in studies
            ]

    def activity(self, since: datetime, limit: int = 1000) -> Activity:
        """Studies that received an instance at or after ``since`` (newest first, at most
        ``limit``), with the jobs and deliveries that concern them."""
        with self.catalog.read() as session:
            studies = session.scalars(
                select(Study)
                .options(selectinload(Study.series))
                .where(Study.last_received_at >= since)
                .order_by(Study.last_received_at.desc(), Study.id.desc())
                .limit(limit)
            ).all()
            uids = [s.study_instance_uid for s in studies]
            series = [x.series_instance_uid for s in studies for x in s.series]
            jobs = (
                session.scalars(
                    select(Job)
                    .where(
                        Job.study_instance_uid.in_(uids)
                        | Job.ncct_series_uid.in_(series)
                        | Job.cta_series_uid.in_(series)
                    )
                    .order_by(Job.id)
                ).all()
                if uids
                else []
            )
            ids = [j.id for j in jobs]
            deliveries = (
                session.scalars(
                    select(Delivery).where(Delivery.job_id.in_(ids)).order_by(Delivery.id)
                ).all()
                if ids
                else []
            )
            return Activity(
                [StudySummary.from_row(s) for s in studies],
                [JobInfo.from_row(j) for j in jobs],
                [
                    DeliveryState(
                        d.job_id,
                        d.destination,
                        str(d.status),
                        d.attempts,
                        d.next_attempt_at,
                        d.last_detail,
                    )
                    for d in deliveries
                ],
            )

    def study(self, study_instance_uid: str, job_limit: int = 50) -> StudyDetail | None:
        """One study with its series and its jobs, or None."""
        with self.catalog.read() as session:
            study = session.scalars(
                select(Study)
                .options(selectinload(Study.series))
                .where(Study.study_instance_uid == study_instance_uid)
            ).one_or_none()
            if study is None:
                return None
            jobs = session.scalars(
                select(Job)
                .where(Job.study_instance_uid == study_instance_uid)
                .order_by(Job.id.desc())
                .limit(job_limit)
            ).all()
            return StudyDetail(StudySummary.from_row(study), _job_rows(session, jobs))

    def recent_jobs(self, limit: int = 100) -> list[JobRow]:
        """The newest jobs with a summary of their deliveries."""
        with self.catalog.read() as session:
            jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all()
            return _job_rows(session, jobs)

    def job(self, job_id: int) -> JobDetail | None:
        """One job with its deliveries and their attempts, or None."""
        with self.catalog.read() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            deliveries = session.scalars(
                select(Delivery)
                .options(selectinload(Delivery.attempt_rows), selectinload(Delivery.job))
                .where(Delivery.job_id == job_id)
                .order_by(Delivery.id)
            ).all()
            return JobDetail(
                _job_rows(session, [job])[0], [DeliveryInfo.from_row(d) for d in deliveries]
            )

    def metric_figures(self) -> MetricFigures:
        """The job-derived figures of ``/metrics``, computed from the rows at scrape time."""
        with self.catalog.read() as session:
            newest_done = (
                select(func.max(Job.id))
                .where(Job.status == JobStatus.DONE)
                .group_by(Job.study_instance_uid)
            )
            studies: dict[str, int] = {str(o): 0 for o in JobOutcome}
            for outcome, n in session.execute(
                select(Job.outcome, func.count())
                .where(Job.id.in_(newest_done))
                .group_by(Job.outcome)
            ):
                if outcome:
                    studies[str(outcome)] = studies.get(str(outcome), 0) + int(n)
            purged_failures = 0
            for outcome, n in session.execute(
                select(PurgeAudit.outcome, func.count()).group_by(PurgeAudit.outcome)
            ):
                if outcome in tuple(JobOutcome):
                    studies[str(outcome)] += int(n)
                elif outcome == JobStatus.FAILED:
                    purged_failures += int(n)
            failures = {
                str(reason or ""): int(n)
                for reason, n in session.execute(
                    select(Job.reason, func.count())
                    .where(Job.status == JobStatus.FAILED)
                    .group_by(Job.reason)
                )
            }
            sent = func.sum(case((Delivery.status == DeliveryStatus.SENT, 1), else_=0))
            turnarounds = []
            for received, finished, total, n_sent, delivered in session.execute(
                select(
                    Job.inputs_received_at,
                    Job.finished_at,
                    func.count(Delivery.id),
                    func.coalesce(sent, 0),
                    func.max(Delivery.sent_at),
                )
                .outerjoin(Delivery, Delivery.job_id == Job.id)
                .where(Job.status == JobStatus.DONE, Job.inputs_received_at.is_not(None))
                .group_by(Job.id)
            ):
                seconds = _turnaround(received, finished, int(total), int(n_sent), delivered)
                if seconds is not None:
                    turnarounds.append(max(0.0, seconds))
            deliveries = {
                str(status): int(n)
                for status, n in session.execute(
                    select(Delivery.status, func.count()).group_by(Delivery.status)
                )
            }
            jobs = _job_counts(session)
            spool_bytes = session.scalar(select(func.coalesce(func.sum(Instance.size_bytes), 0)))
            return MetricFigures(
                studies_analysed=studies,
                job_failures=failures,
                purged_failures=purged_failures,
                turnarounds=turnarounds,
                jobs=jobs,
                deliveries=deliveries,
                queued_jobs=jobs.get(JobStatus.QUEUED, 0),
                pending_deliveries=deliveries.get(DeliveryStatus.PENDING, 0),
                spool_bytes=int(spool_bytes or 0),
            )


def _job_counts(session: Session) -> dict[str, int]:
    counts = dict.fromkeys((str(s) for s in JobStatus), 0)
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[str(status)] = int(n)
    return counts


def _job_rows(session: Session, jobs: Sequence[Job]) -> list[JobRow]:
    """The jobs with their deliveries counted by status, in one query."""
    ids = [j.id for j in jobs]
    by_job: dict[int, dict[str, int]] = {}
    delivered: dict[int, datetime | None] = {}
    if ids:
        for job_id, status, n, last_sent in session.execute(
            select(Delivery.job_id, Delivery.status, func.count(), func.max(Delivery.sent_at))
            .where(Delivery.job_id.in_(ids))
            .group_by(Delivery.job_id, Delivery.status)
        ):
            by_job.setdefault(job_id, {})[str(status)] = int(n)
            if status == DeliveryStatus.SENT:
                delivered[job_id] = last_sent
    return [JobRow(JobInfo.from_row(j), by_job.get(j.id, {}), delivered.get(j.id)) for j in jobs]
