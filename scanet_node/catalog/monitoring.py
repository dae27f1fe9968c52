"""The monitoring rows: one per analysed study, its outcome matched in from the registry.

:meth:`MonitoringStore.record` is called in the transaction that finishes an analysed job
(``JobQueue.finish_job``); :meth:`MonitoringStore.import_outcomes` matches the registry's
rows to studies; retention calls :func:`deidentify` in the transaction that purges them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from scanet_node.catalog.models import (
    Job,
    JobOutcome,
    JobStatus,
    MonitoringRecord,
    Series,
    Study,
)
from scanet_node.catalog.store import Catalog, utcnow
from scanet_node.monitoring.report import Record

if TYPE_CHECKING:
    from scanet_node.monitoring.outcomes import OutcomeRow


class Matched(enum.StrEnum):
    """What importing one registry row did."""

    STORED = "stored"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"
    KEPT_LATER = "kept the later procedure"
    UNMATCHED = "unmatched"


@dataclass(frozen=True)
class RowResult:
    """One registry row's fate, with the reason when it did not match or replaced a grade."""

    line: int
    result: Matched
    detail: str = ""


@dataclass
class ImportSummary:
    """What ``outcomes import`` did with a file."""

    rows: list[RowResult] = field(default_factory=list)

    def count(self, result: Matched) -> int:
        """Rows with this result."""
        return sum(1 for r in self.rows if r.result == result)

    @property
    def matched(self) -> int:
        """Rows that matched an analysed study (stored, unchanged, replaced or kept)."""
        return len(self.rows) - self.count(Matched.UNMATCHED)


def _month_start(when: datetime) -> datetime:
    return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def record(
    session: Session,
    *,
    study_instance_uid: str,
    job_id: int,
    model: str | None,
    probability: float,
    positive: bool | None,
    descriptors: dict[str, Any],
    at: datetime,
) -> None:
    """Keep an analysed study's prediction and descriptors, replacing an earlier analysis's.

    An outcome already imported for the study stays: it is about the patient, not the run.
    """
    row = session.scalar(
        select(MonitoringRecord)
        .where(MonitoringRecord.study_instance_uid == study_instance_uid)
        .with_for_update()
    )
    if row is None:
        row = MonitoringRecord(study_instance_uid=study_instance_uid, month_only=False)
        session.add(row)
    row.job_id = job_id
    row.analysed_at = at
    row.model = model
    row.probability = probability
    row.positive = positive
    row.descriptors = json.dumps(descriptors, sort_keys=True)


def deidentify(session: Session, study_uids: Collection[str]) -> int:
    """Strip the monitoring rows of ``study_uids`` of what names the study; their number.

    UID, job and procedure key go; the analysis, procedure and import dates are cut to the
    first of their month. The prediction, the descriptors and the grade stay.
    """
    rows = session.scalars(
        select(MonitoringRecord).where(MonitoringRecord.study_instance_uid.in_(study_uids))
    ).all()
    for row in rows:
        row.study_instance_uid = None
        row.job_id = None
        row.procedure_key = None
        row.month_only = True
        row.analysed_at = _month_start(row.analysed_at)
        if row.procedure_date is not None:
            row.procedure_date = _month_start(row.procedure_date)
        if row.outcome_imported_at is not None:
            row.outcome_imported_at = _month_start(row.outcome_imported_at)
    return len(rows)


class MonitoringStore:
    """The catalog's monitoring rows: read them, and match the registry's outcomes to them."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def records(self) -> list[Record]:
        """Every monitoring row, oldest first, as :class:`monitoring.report.Record`."""
        with self.catalog.read() as session:
            rows = session.scalars(select(MonitoringRecord).order_by(MonitoringRecord.id)).all()
            return [
                Record(
                    analysed_at=r.analysed_at,
                    month_only=r.month_only,
                    probability=r.probability,
                    grade=r.grade,
                    descriptors=json.loads(r.descriptors or "{}"),
                )
                for r in rows
            ]

    def import_outcomes(self, rows: Sequence[OutcomeRow]) -> ImportSummary:
        """Match each row to an analysed study and store its grade: one transaction.

        A row names its study by UID, accession number, or patient and CT date; it must find
        exactly one study of the catalog with an analysed result. The same row imported
        again changes nothing; another grade for the same procedure replaces the stored one;
        another procedure of the same study replaces it when it is the later one.
        """
        summary = ImportSummary()
        now = utcnow()
        with self.catalog.write() as session:
            for row in rows:
                summary.rows.append(self._import_row(session, row, now))
        return summary

    def _import_row(self, session: Session, row: OutcomeRow, now: datetime) -> RowResult:
        uids, named = _studies_named(session, row)
        if not uids:
            return RowResult(row.line, Matched.UNMATCHED, f"no study with {named} in the catalog")
        records = session.scalars(
            select(MonitoringRecord)
            .where(MonitoringRecord.study_instance_uid.in_(_with_paired_studies(session, uids)))
            .with_for_update()
        ).all()
        if not records:
            why = _why_not_analysed(session, uids)
            return RowResult(row.line, Matched.UNMATCHED, f"the study with {named} {why}")
        if len(records) > 1:
            return RowResult(
                row.line,
                Matched.UNMATCHED,
                f"{named} names {len(records)} analysed studies: give the Study Instance UID",
            )
        target = records[0]
        procedure_date = datetime.combine(row.procedure_date, datetime.min.time())
        result, detail = Matched.STORED, ""
        if target.procedure_key == row.procedure_key:
            if target.grade == row.grade:
                return RowResult(row.line, Matched.UNCHANGED)
            result, detail = Matched.REPLACED, f"grade {target.grade} replaced by {row.grade}"
        elif target.procedure_key is not None and target.grade is not None:
            if target.procedure_date is not None and target.procedure_date > procedure_date:
                return RowResult(
                    row.line,
                    Matched.KEPT_LATER,
                    f"the study's grade {target.grade} is from a later procedure "
                    f"({target.procedure_date.date().isoformat()})",
                )
            result = Matched.REPLACED
            detail = f"grade {target.grade} of an earlier procedure replaced by {row.grade}"
        target.grade = row.grade
        target.procedure_key = row.procedure_key
        target.procedure_date = procedure_date
        target.outcome_imported_at = now
        return RowResult(row.line, result, detail)


def _studies_named(session: Session, row: OutcomeRow) -> tuple[list[str], str]:
    if row.study_instance_uid:
        # The results are filed in the job's study, which may hold no image of its own (a
        # CTA filed under its own study, paired with the NCCT's): ask the jobs too.
        uid = row.study_instance_uid
        known = session.scalar(
            select(Study.id).where(Study.study_instance_uid == uid).limit(1)
        ) or session.scalar(select(Job.id).where(Job.study_instance_uid == uid).limit(1))
        return ([uid] if known is not None else []), "this Study Instance UID"
    if row.accession_number:
        query = select(Study.study_instance_uid).where(
            Study.accession_number == row.accession_number
        )
        named = "this accession number"
    else:
        ct_date: date | None = row.ct_date
        query = select(Study.study_instance_uid).where(
            Study.patient_key == row.patient_key,
            Study.study_date == (ct_date.strftime("%Y%m%d") if ct_date else None),
        )
        named = "this patient and CT date"
    return list(session.scalars(query)), named


def _with_paired_studies(session: Session, uids: Sequence[str]) -> list[str]:
    """``uids`` and the studies whose jobs read a series of them: a study's NCCT paired with a
    CTA filed under another study has its result (and monitoring row) in that other study."""
    series = select(Series.series_instance_uid).join(Study, Study.id == Series.study_id)
    series = series.where(Study.study_instance_uid.in_(uids))
    paired = session.scalars(
        select(Job.study_instance_uid)
        .where(or_(Job.ncct_series_uid.in_(series), Job.cta_series_uid.in_(series)))
        .distinct()
    )
    return sorted({*uids, *paired})


def _why_not_analysed(session: Session, uids: Sequence[str]) -> str:
    jobs = session.execute(
        select(Job.status, Job.outcome).where(Job.study_instance_uid.in_(uids)).order_by(Job.id)
    ).all()
    if not jobs:
        return "has no analysis"
    status, outcome = jobs[-1]
    if status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return "is still being analysed"
    if outcome == JobOutcome.NOT_ANALYSABLE:
        return "was not analysable"
    return "has no analysed result"
