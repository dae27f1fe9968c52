"""The job and delivery operations: what the trigger, the worker and the operator CLI call.

Every state change is one committed transaction. A job or a delivery is claimed with a lease
(``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` already
serialises writers), so N workers never run the same job at once, and one that dies leaves a
lease that expires.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from scanet_node.catalog import monitoring
from scanet_node.catalog.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Job,
    JobOutcome,
    JobStatus,
    Role,
    Series,
    SeriesState,
    Study,
)
from scanet_node.catalog.store import Catalog, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesToClassify:
    """A settled series whose role (NCCT, CTA, other) is not decided yet."""

    series_instance_uid: str
    study_instance_uid: str
    paths: list[str]


@dataclass(frozen=True)
class CandidateSeries:
    """A series as the trigger sees it (pipeline/trigger.py decides on these)."""

    series_instance_uid: str
    study_instance_uid: str
    patient_key: str | None
    role: str | None
    state: str
    num_instances: int
    slice_thickness: float | None
    first_received_at: datetime
    last_received_at: datetime


@dataclass(frozen=True)
class JobInfo:
    """A job as the trigger, the worker and the CLI see it."""

    id: int
    study_instance_uid: str
    patient_key: str | None
    ncct_series_uid: str | None
    cta_series_uid: str | None
    missing: str | None
    signature: str
    supersedes_id: int | None
    status: str
    attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    outcome: str | None
    reason: str | None
    probability: float | None
    positive: bool | None
    model: str | None
    sr_sop_instance_uid: str | None
    results_dir: str | None
    timings: dict[str, float]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    inputs_received_at: datetime | None
    #: Attempts that ended with the worker gone (its lease expired).
    worker_stops: int = 0

    @classmethod
    def from_row(cls, job: Job) -> JobInfo:
        """The job as the row holds it."""
        return cls(
            id=job.id,
            study_instance_uid=job.study_instance_uid,
            patient_key=job.patient_key,
            ncct_series_uid=job.ncct_series_uid,
            cta_series_uid=job.cta_series_uid,
            missing=job.missing,
            signature=job.signature,
            supersedes_id=job.supersedes_id,
            status=str(job.status),
            attempts=job.attempts,
            run_after=job.run_after,
            lease_owner=job.lease_owner,
            lease_expires_at=job.lease_expires_at,
            outcome=job.outcome,
            reason=job.reason,
            probability=job.probability,
            positive=job.positive,
            model=job.model,
            sr_sop_instance_uid=job.sr_sop_instance_uid,
            results_dir=job.results_dir,
            timings=json.loads(job.timings) if job.timings else {},
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            inputs_received_at=job.inputs_received_at,
            worker_stops=job.worker_stops or 0,
        )


@dataclass(frozen=True)
class JobSpec:
    """A job the trigger wants: the inputs, where results go, what it amends."""

    study_instance_uid: str
    patient_key: str | None
    ncct_series_uid: str | None
    cta_series_uid: str | None
    signature: str
    #: A :class:`~scanet_node.catalog.models.MissingSeries` when the job only reports that
    #: one of the two never came.
    missing: str | None = None
    supersedes_id: int | None = None
    inputs_received_at: datetime | None = None


@dataclass(frozen=True)
class AttemptInfo:
    """One try at sending a job's results to a destination."""

    started_at: datetime
    seconds: float
    ok: bool
    permanent: bool
    status: str
    detail: str
    sent: int


@dataclass(frozen=True)
class DeliveryInfo:
    """A delivery (one job's results to one destination) with its attempts."""

    id: int
    job_id: int
    study_instance_uid: str
    results_dir: str | None
    destination: str
    ae_title: str
    host: str
    port: int
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: str | None
    last_detail: str | None
    created_at: datetime
    sent_at: datetime | None
    attempt_rows: list[AttemptInfo]

    @classmethod
    def from_row(cls, delivery: Delivery) -> DeliveryInfo:
        """The delivery as the row holds it, with its attempts (loads ``job``, ``attempt_rows``)."""
        return cls(
            id=delivery.id,
            job_id=delivery.job_id,
            study_instance_uid=delivery.job.study_instance_uid,
            results_dir=delivery.job.results_dir,
            destination=delivery.destination,
            ae_title=delivery.ae_title,
            host=delivery.host,
            port=delivery.port,
            status=str(delivery.status),
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_status=delivery.last_status,
            last_detail=delivery.last_detail,
            created_at=delivery.created_at,
            sent_at=delivery.sent_at,
            attempt_rows=[
                AttemptInfo(a.started_at, a.seconds, a.ok, a.permanent, a.status, a.detail, a.sent)
                for a in delivery.attempt_rows
            ],
        )


class JobQueue:
    """Jobs and deliveries in the catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- series roles ---------------------------------------------------------------------

    def series_to_classify(self) -> list[SeriesToClassify]:
        """Settled series without a role, with their instance paths."""
        with self.catalog.read() as session:
            rows = session.execute(
                select(Series.series_instance_uid, Study.study_instance_uid)
                .join(Study, Study.id == Series.study_id)
                .where(Series.state == SeriesState.SETTLED, Series.role.is_(None))
            ).all()
        return [
            SeriesToClassify(series_uid, study_uid, self.catalog.instance_paths(series_uid))
            for series_uid, study_uid in rows
        ]

    def nccts_to_prepare(self, settled_since: datetime) -> list[SeriesToClassify]:
        """Settled NCCTs, settled after ``settled_since``, that no job uses yet, with their
        instance paths: what an idle worker prepares before their CTA arrives."""
        with self.catalog.read() as session:
            rows = session.execute(
                select(Series.series_instance_uid, Study.study_instance_uid)
                .join(Study, Study.id == Series.study_id)
                .where(
                    Series.state == SeriesState.SETTLED,
                    Series.role == Role.NCCT,
                    Series.settled_at >= settled_since,
                    ~select(Job.id)
                    .where(Job.ncct_series_uid == Series.series_instance_uid)
                    .exists(),
                )
                .order_by(Series.settled_at.desc())
            ).all()
        return [
            SeriesToClassify(series_uid, study_uid, self.catalog.instance_paths(series_uid))
            for series_uid, study_uid in rows
        ]

    def set_series_role(self, series_instance_uid: str, role: str, reason: str) -> None:
        """Record the role of a series (a :class:`~scanet_node.catalog.models.Role`) and why."""
        with self.catalog.write() as session:
            session.execute(
                update(Series)
                .where(Series.series_instance_uid == series_instance_uid)
                .values(role=role, role_reason=reason[:4000])
            )

    def candidates(self) -> list[CandidateSeries]:
        """Every series in the catalog, with what the trigger decides on (never instances)."""
        with self.catalog.read() as session:
            rows = session.execute(
                select(
                    Series.series_instance_uid,
                    Study.study_instance_uid,
                    Study.patient_key,
                    Series.role,
                    Series.state,
                    Series.num_instances,
                    Series.slice_thickness,
                    Series.first_received_at,
                    Series.last_received_at,
                ).join(Study, Study.id == Series.study_id)
            ).all()
        return [
            CandidateSeries(r[0], r[1], r[2], r[3], str(r[4]), r[5], r[6], r[7], r[8]) for r in rows
        ]

    # -- jobs -----------------------------------------------------------------------------

    def jobs(
        self, study_instance_uid: str | None = None, limit: int | None = None
    ) -> list[JobInfo]:
        """Jobs, newest first (of one study when given)."""
        with self.catalog.read() as session:
            query = select(Job).order_by(Job.id.desc())
            if study_instance_uid is not None:
                query = query.where(Job.study_instance_uid == study_instance_uid)
            if limit is not None:
                query = query.limit(limit)
            return [JobInfo.from_row(j) for j in session.scalars(query)]

    def job(self, job_id: int) -> JobInfo | None:
        """One job, or None."""
        with self.catalog.read() as session:
            job = session.get(Job, job_id)
            return None if job is None else JobInfo.from_row(job)

    def latest_jobs(self) -> dict[str, JobInfo]:
        """The newest job of each study that has one."""
        with self.catalog.read() as session:
            newest = select(func.max(Job.id)).group_by(Job.study_instance_uid)
            jobs = session.scalars(select(Job).where(Job.id.in_(newest))).all()
            return {j.study_instance_uid: JobInfo.from_row(j) for j in jobs}

    def create_job(self, spec: JobSpec, now: datetime | None = None) -> JobInfo | None:
        """Queue a job; None when the study already has one queued or running."""
        now = now or utcnow()
        try:
            with self.catalog.write() as session:
                job = Job(
                    study_instance_uid=spec.study_instance_uid,
                    patient_key=spec.patient_key,
                    ncct_series_uid=spec.ncct_series_uid,
                    cta_series_uid=spec.cta_series_uid,
                    missing=spec.missing,
                    signature=spec.signature,
                    supersedes_id=spec.supersedes_id,
                    status=JobStatus.QUEUED,
                    attempts=0,
                    run_after=now,
                    created_at=now,
                    inputs_received_at=spec.inputs_received_at,
                )
                session.add(job)
                session.flush()
                return JobInfo.from_row(job)
        except IntegrityError:
            return None

    def update_queued_job(self, job_id: int, spec: JobSpec) -> bool:
        """Point a job nobody has claimed yet at newer inputs; False if it has started."""
        with self.catalog.write() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.attempts == 0)
                .values(
                    ncct_series_uid=spec.ncct_series_uid,
                    cta_series_uid=spec.cta_series_uid,
                    missing=spec.missing,
                    signature=spec.signature,
                    inputs_received_at=spec.inputs_received_at,
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def claim_job(
        self, owner: str, lease_seconds: float, now: datetime | None = None
    ) -> JobInfo | None:
        """Take the oldest runnable job: queued and due, or running with an expired lease."""
        now = now or utcnow()
        with self.catalog.write() as session:
            job = session.scalars(
                select(Job)
                .where(
                    or_(
                        (Job.status == JobStatus.QUEUED) & (Job.run_after <= now),
                        (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now),
                    )
                )
                .order_by(Job.run_after, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if job is None:
                return None
            if job.status == JobStatus.RUNNING:
                # Its worker is gone (killed, out of memory): that attempt is used up. The
                # worker that takes it now decides whether another attempt is left.
                job.worker_stops = (job.worker_stops or 0) + 1
                logger.warning(
                    "job %d: lease of %s expired (worker stopped %d time(s)), taking it over",
                    job.id,
                    job.lease_owner,
                    job.worker_stops,
                    extra={"job_id": job.id, "study_uid": job.study_instance_uid},
                )
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.lease_owner = owner
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.started_at = now
            return JobInfo.from_row(job)

    def renew_lease(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend a running job's lease; False when this owner no longer holds it."""
        with self.catalog.write() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            )
            return bool(getattr(result, "rowcount", 0))

    def finish_job(
        self,
        job_id: int,
        owner: str,
        *,
        outcome: str,
        reason: str | None,
        probability: float | None,
        positive: bool | None,
        model: str | None,
        sr_sop_instance_uid: str | None,
        results_dir: str | None,
        timings: dict[str, float],
        destinations: Sequence[Any],
        failed: bool = False,
        descriptors: dict[str, Any] | None = None,
    ) -> bool:
        """Mark a job done and queue one delivery per destination, in one transaction.

        ``failed`` records it as failed for good instead, with the report that says so (a
        "not analysable" SR) delivered like any result. False (and nothing changes) when the
        lease was lost to another worker. An analysed job's prediction and input
        ``descriptors`` are kept for monitoring (:func:`catalog.monitoring.record`).
        """
        now = utcnow()
        with self.catalog.write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.lease_owner != owner or job.status != JobStatus.RUNNING:
                return False
            job.status = JobStatus.FAILED if failed else JobStatus.DONE
            job.outcome = outcome
            job.reason = reason
            job.probability = probability
            job.positive = positive
            job.model = model
            job.sr_sop_instance_uid = sr_sop_instance_uid
            job.results_dir = results_dir
            job.timings = json.dumps({k: round(v, 3) for k, v in timings.items()})
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
            if outcome == JobOutcome.ANALYSED and probability is not None and not failed:
                monitoring.record(
                    session,
                    study_instance_uid=job.study_instance_uid,
                    job_id=job.id,
                    model=model,
                    probability=probability,
                    positive=positive,
                    descriptors=descriptors or {},
                    at=now,
                )
            for dest in destinations:
                session.add(
                    Delivery(
                        job_id=job.id,
                        destination=dest.name,
                        ae_title=dest.ae_title,
                        host=dest.host,
                        port=dest.port,
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
            return True

    def fail_job(
        self, job_id: int, owner: str, reason: str, retry_at: datetime | None = None
    ) -> bool:
        """Record a failure: queue the job again at ``retry_at``, or fail it for good."""
        with self.catalog.write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.lease_owner != owner or job.status != JobStatus.RUNNING:
                return False
            job.reason = reason[:4000]
            job.lease_owner = None
            job.lease_expires_at = None
            if retry_at is None:
                job.status = JobStatus.FAILED
                job.finished_at = utcnow()
            else:
                job.status = JobStatus.QUEUED
                job.run_after = retry_at
            return True

    def reprocess(self, study_instance_uid: str) -> JobInfo | None:
        """Queue the study's last job again as a new job that amends it; None if none."""
        latest = self.jobs(study_instance_uid, limit=1)
        if not latest:
            return None
        last = latest[0]
        return self.create_job(
            JobSpec(
                study_instance_uid=last.study_instance_uid,
                patient_key=last.patient_key,
                ncct_series_uid=last.ncct_series_uid,
                cta_series_uid=last.cta_series_uid,
                signature=f"{last.signature};reprocess={utcnow().isoformat()}",
                missing=last.missing,
                supersedes_id=last.id if last.sr_sop_instance_uid else last.supersedes_id,
                inputs_received_at=last.inputs_received_at,
            )
        )

    # -- deliveries -----------------------------------------------------------------------

    def claim_delivery(
        self, lease_seconds: float, now: datetime | None = None
    ) -> DeliveryInfo | None:
        """Take the oldest pending delivery that is due and not being sent by another worker."""
        now = now or utcnow()
        with self.catalog.write() as session:
            delivery = session.scalars(
                select(Delivery)
                .where(
                    Delivery.status == DeliveryStatus.PENDING,
                    Delivery.next_attempt_at <= now,
                    or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now),
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if delivery is None:
                return None
            delivery.lease_expires_at = now + timedelta(seconds=lease_seconds)
            session.flush()
            return DeliveryInfo.from_row(delivery)

    def record_attempt(
        self,
        delivery_id: int,
        attempt: AttemptInfo,
        *,
        next_attempt_at: datetime | None,
        give_up: bool = False,
    ) -> DeliveryInfo:
        """Record one try; the delivery is sent, failed for good, or due again later."""
        with self.catalog.write() as session:
            delivery = session.get(Delivery, delivery_id, with_for_update=True)
            if delivery is None:
                raise KeyError(delivery_id)
            session.add(
                DeliveryAttempt(
                    delivery_id=delivery_id,
                    started_at=attempt.started_at,
                    seconds=attempt.seconds,
                    ok=attempt.ok,
                    permanent=attempt.permanent,
                    status=attempt.status,
                    detail=attempt.detail[:4000],
                    sent=attempt.sent,
                )
            )
            delivery.attempts += 1
            delivery.last_status = attempt.status
            delivery.last_detail = attempt.detail[:4000]
            delivery.lease_expires_at = None
            if attempt.ok:
                delivery.status = DeliveryStatus.SENT
                delivery.sent_at = utcnow()
            elif attempt.permanent or give_up or next_attempt_at is None:
                delivery.status = DeliveryStatus.FAILED
            else:
                delivery.next_attempt_at = next_attempt_at
            session.flush()
            session.refresh(delivery)
            return DeliveryInfo.from_row(delivery)

    def deliveries(
        self, job_id: int | None = None, study_instance_uid: str | None = None
    ) -> list[DeliveryInfo]:
        """Deliveries with their attempts, newest first."""
        with self.catalog.read() as session:
            query = select(Delivery).join(Job).order_by(Delivery.id.desc())
            if job_id is not None:
                query = query.where(Delivery.job_id == job_id)
            if study_instance_uid is not None:
                query = query.where(Job.study_instance_uid == study_instance_uid)
            return [DeliveryInfo.from_row(d) for d in session.scalars(query)]

    def resend(self, delivery_id: int) -> DeliveryInfo | None:
        """Make a delivery pending and due now, whatever its state; None if unknown.

        Its attempts so far stay recorded; the give-up time counts from now.
        """
        with self.catalog.write() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return None
            delivery.status = DeliveryStatus.PENDING
            delivery.next_attempt_at = utcnow()
            delivery.lease_expires_at = None
            # The give-up clock ([delivery] give_up_after_hours) starts again.
            delivery.created_at = utcnow()
            session.flush()
            return DeliveryInfo.from_row(delivery)
