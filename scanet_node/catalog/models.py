"""The catalog's tables: Study, Series, Instance, Job, Delivery, DeliveryAttempt, PurgeAudit,
MonitoringRecord.

Identifiers of the patient are not kept in clear: ``patient_key`` is a SHA-256 of
the issuer and Patient ID, enough to pair series of one patient across studies.
Timestamps are naive UTC. The closed sets of values a column holds are the enums here
(``SeriesState``, ``Role``, ``JobStatus``, ``MissingSeries``, ``JobOutcome``, ``DeliveryStatus``,
``PurgeRule``): compare against them, never against their strings.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of the catalog."""


class SeriesState(enum.StrEnum):
    """Where a series stands in the hand-over to analysis."""

    RECEIVING = "receiving"
    SETTLED = "settled"


class Role(enum.StrEnum):
    """What a settled series is to the analysis (``Series.role``), as imaging/classify.py
    decides it."""

    NCCT = "ncct"
    CTA = "cta"
    OTHER = "other"


class JobStatus(enum.StrEnum):
    """Where an analysis job stands (procrastinate's vocabulary)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: A job in one of these is active: at most one per study (``uq_job_active_study``).
ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class MissingSeries(enum.StrEnum):
    """Which input never came within the pairing window (``Job.missing``): such a job is
    reported to the PACS as not analysable."""

    CTA = "CTA missing"
    NCCT = "NCCT missing"


class JobOutcome(enum.StrEnum):
    """How an analysis ended (``Job.outcome``): set when the job is done, or failed for good
    with a report that says so."""

    ANALYSED = "analysed"
    NOT_ANALYSABLE = "not_analysable"


class DeliveryStatus(enum.StrEnum):
    """Where sending one job's results to one destination stands."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class PurgeRule(enum.StrEnum):
    """Why retention purged a study (``PurgeAudit.rule``)."""

    #: Its last instance arrived more than ``[retention] days`` ago.
    AGE = "age"
    #: Every delivery of its results succeeded (``[retention] purge_after_delivery``).
    DELIVERED = "delivered"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class Study(Base):
    """One study, as identified by its Study Instance UID."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_key: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    #: To match the stroke registry's outcome rows (``outcomes import``) by accession.
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)

    series: Mapped[list[Series]] = relationship(
        back_populates="study", order_by="Series.series_number"
    )


class Series(Base):
    """One series of a study, with the attributes series selection needs."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(128))
    contrast_agent: Mapped[str | None] = mapped_column(String(64))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[SeriesState] = mapped_column(
        Enum(
            SeriesState,
            native_enum=False,
            length=16,
            values_callable=lambda states: [s.value for s in states],
        ),
        default=SeriesState.RECEIVING,
    )
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: When a sender was last done with the series (its association released, or moved on to
    #: another series) while no other association was delivering it; cleared by the next
    #: instance. The settle sweep settles it ``settle_after_release_seconds`` later.
    released_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: A :class:`Role`, decided when the series settles (imaging/classify.py).
    role: Mapped[str | None] = mapped_column(String(8))
    role_reason: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="series")

    __table_args__ = (Index("ix_series_state_last", "state", "last_received_at"),)


class Instance(Base):
    """One received SOP instance and where its file lies in the spool."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(260))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime)


class Job(Base):
    """One analysis of a patient's NCCT + CTA (or the report that one of them is missing).

    ``study_instance_uid`` is the study the results are filed in (the CTA's). ``signature``
    names the inputs (series UIDs and instance counts): the trigger makes a new job only when
    it changes, so a study is analysed once, and again (an amendment, ``supersedes_id``) only
    when its inputs grew. At most one job per study is queued or running (a partial unique
    index). ``lease_expires_at`` is renewed while a worker runs the job; a job whose lease
    has expired is claimed again.
    """

    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_key: Mapped[str | None] = mapped_column(String(64))
    ncct_series_uid: Mapped[str | None] = mapped_column(String(64))
    cta_series_uid: Mapped[str | None] = mapped_column(String(64))
    #: A :class:`MissingSeries` when the partner never came within the pairing window.
    missing: Mapped[str | None] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(400))
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: How many of the attempts ended with the worker gone (its lease expired): killed, out
    #: of memory, a crash in native code.
    worker_stops: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    run_after: Mapped[datetime] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: A :class:`JobOutcome` once done; the reason says why on failure too.
    outcome: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    probability: Mapped[float | None] = mapped_column(Float)
    positive: Mapped[bool | None] = mapped_column()
    model: Mapped[str | None] = mapped_column(String(120))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    results_dir: Mapped[str | None] = mapped_column(String(260))
    #: JSON: seconds per stage (load, register, infer, build, send).
    timings: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: When the last instance of its inputs was received (for turnaround figures).
    inputs_received_at: Mapped[datetime | None] = mapped_column(DateTime)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")

    __table_args__ = (
        Index("ix_job_status_run_after", "status", "run_after"),
        Index(
            "uq_job_active_study",
            "study_instance_uid",
            unique=True,
            sqlite_where=text("status IN ('queued', 'running')"),
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )


class Delivery(Base):
    """Sending one job's results to one destination; each try is a DeliveryAttempt."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_status: Mapped[str | None] = mapped_column(String(32))
    last_detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)

    job: Mapped[Job] = relationship(back_populates="deliveries")
    attempt_rows: Mapped[list[DeliveryAttempt]] = relationship(order_by="DeliveryAttempt.id")

    __table_args__ = (Index("ix_delivery_status_next", "status", "next_attempt_at"),)


class DeliveryAttempt(Base):
    """One association to a destination: when, how it ended, and why."""

    __tablename__ = "delivery_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("delivery.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    seconds: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column()
    permanent: Mapped[bool] = mapped_column()
    status: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    sent: Mapped[int] = mapped_column(Integer, default=0)


class PurgeAudit(Base):
    """What remains of a study after retention purged it: de-identified, for the audit trail.

    No UIDs, no patient key, no study date: only when it was received and purged, by which
    rule, how much it held, and how its analysis and deliveries ended.
    """

    __tablename__ = "purge_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purged_at: Mapped[datetime] = mapped_column(DateTime)
    #: A :class:`PurgeRule`.
    rule: Mapped[str] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)
    num_series: Mapped[int] = mapped_column(Integer)
    num_instances: Mapped[int] = mapped_column(Integer)
    bytes_freed: Mapped[int] = mapped_column(BigInteger)
    #: Jobs that filed results in the study, the last one's outcome, and its deliveries.
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str | None] = mapped_column(String(16))
    deliveries_sent: Mapped[int] = mapped_column(Integer, default=0)
    deliveries_failed: Mapped[int] = mapped_column(Integer, default=0)


class MonitoringRecord(Base):
    """What monitoring keeps of one analysed study: its prediction, input descriptors, outcome.

    One row per study, replaced when the study is analysed again (an amended result). While the
    study is in the catalog the row names it (``study_instance_uid``, ``job_id``); when
    retention purges the study the row stays, de-identified: no UID, no job, no procedure key,
    and its dates cut to the first of their month (``month_only``). So the local performance
    and drift figures outlive the images.
    """

    __tablename__ = "monitoring"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), unique=True)
    job_id: Mapped[int | None] = mapped_column(Integer)
    analysed_at: Mapped[datetime] = mapped_column(DateTime)
    month_only: Mapped[bool] = mapped_column(default=False)
    model: Mapped[str | None] = mapped_column(String(120))
    probability: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool | None] = mapped_column()
    #: JSON object of ``monitoring.descriptors`` values.
    descriptors: Mapped[str] = mapped_column(Text, default="{}")
    #: The final mTICI grade (``0 1 2a 2b 2c 3``) from ``outcomes import``.
    grade: Mapped[str | None] = mapped_column(String(2))
    #: Which registry procedure gave the grade (``OutcomeRow.procedure_key``).
    procedure_key: Mapped[str | None] = mapped_column(String(200))
    procedure_date: Mapped[datetime | None] = mapped_column(DateTime)
    outcome_imported_at: Mapped[datetime | None] = mapped_column(DateTime)
