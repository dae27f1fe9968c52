"""The catalog's tables: Study, Series, Instance.

Identifiers of the patient are not kept in clear: ``patient_key`` is a SHA-256 of
the issuer and Patient ID, enough to pair series of one patient across studies.
Timestamps are naive UTC.
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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of the catalog."""


class SeriesState(enum.StrEnum):
    """Where a series stands in the hand-over to analysis."""

    RECEIVING = "receiving"
    SETTLED = "settled"


class Study(Base):
    """One study, as identified by its Study Instance UID."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_key: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
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
