"""The trigger: which jobs a patient's settled series call for. A pure decision on rows.

Rules (README, "When a study is analysed"):

* A patient's settled NCCT and settled CTA make one job as soon as both are there, if they
  were received within ``pairing_window`` of each other, even when they sit in different
  studies (sites often file the CTA under its own accession). The results are filed in the
  study that holds the CTA.
* Among several CTAs the thinnest, then the largest, wins; the NCCT paired with it is the one
  received closest in time.
* A job is named by its inputs (``signature``: series UIDs and instance counts). Nothing new is
  made while the signature is unchanged; when it changes after a job finished (a series grew,
  a better series came), the new job amends the old one (``supersedes_id``). A queued job
  that no worker has started is pointed at the new inputs instead.
* A settled NCCT (CTA) with no partner after ``pairing_window`` becomes a "CTA missing"
  ("NCCT missing") job, reported to the PACS as not analysable.
* While a series of the patient's pair is still receiving, the job waits for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from scanet_node.catalog.jobs import CandidateSeries, JobInfo, JobSpec
from scanet_node.catalog.models import (
    ACTIVE_JOB_STATUSES,
    JobStatus,
    MissingSeries,
    Role,
    SeriesState,
)


@dataclass(frozen=True)
class Decision:
    """What the trigger wants done: create ``spec``, or re-point queued job ``update_job_id``."""

    spec: JobSpec
    update_job_id: int | None = None


def signature(ncct: CandidateSeries | None, cta: CandidateSeries | None) -> str:
    """The name of a job's inputs; it changes when a series is replaced or grows."""

    def part(label: str, s: CandidateSeries | None) -> str:
        return (
            f"{label}=missing"
            if s is None
            else f"{label}={s.series_instance_uid}:{s.num_instances}"
        )

    return f"{part('ncct', ncct)};{part('cta', cta)}"


def _best_cta(ctas: Sequence[CandidateSeries]) -> CandidateSeries:
    return min(
        ctas,
        key=lambda s: (
            s.slice_thickness if s.slice_thickness is not None else 99.0,
            -s.num_instances,
            -s.last_received_at.timestamp(),
        ),
    )


def _gap(a: CandidateSeries, b: CandidateSeries) -> timedelta:
    """Time between two series' receptions (0 when they overlap)."""
    if a.last_received_at < b.first_received_at:
        return b.first_received_at - a.last_received_at
    if b.last_received_at < a.first_received_at:
        return a.first_received_at - b.last_received_at
    return timedelta(0)


def _decide(spec: JobSpec, latest: JobInfo | None) -> Decision | None:
    if latest is None:
        return Decision(spec)
    if latest.signature == spec.signature or latest.signature.startswith(spec.signature + ";"):
        return None
    if latest.status in ACTIVE_JOB_STATUSES:
        if latest.status == JobStatus.QUEUED and latest.attempts == 0:
            return Decision(spec, update_job_id=latest.id)
        return None  # the running job finishes first; the next sweep amends it
    amends = latest.id if latest.sr_sop_instance_uid else latest.supersedes_id
    return Decision(
        JobSpec(
            study_instance_uid=spec.study_instance_uid,
            patient_key=spec.patient_key,
            ncct_series_uid=spec.ncct_series_uid,
            cta_series_uid=spec.cta_series_uid,
            signature=spec.signature,
            missing=spec.missing,
            supersedes_id=amends,
            inputs_received_at=spec.inputs_received_at,
        )
    )


def plan_jobs(
    series: Sequence[CandidateSeries],
    latest_jobs: dict[str, JobInfo],
    now: datetime,
    pairing_window: timedelta,
) -> list[Decision]:
    """The jobs to create or re-point, given every series and each study's newest job."""
    by_patient: dict[str, list[CandidateSeries]] = defaultdict(list)
    for s in series:
        by_patient[s.patient_key or f"study:{s.study_instance_uid}"].append(s)
    decisions: list[Decision] = []
    for members in by_patient.values():
        receiving = [s for s in members if s.state != SeriesState.SETTLED]
        nccts = [s for s in members if s.state == SeriesState.SETTLED and s.role == Role.NCCT]
        ctas = [s for s in members if s.state == SeriesState.SETTLED and s.role == Role.CTA]
        unclassified = [s for s in members if s.state == SeriesState.SETTLED and s.role is None]
        if unclassified:
            continue  # decide once every settled series of the patient has its role
        paired_nccts: set[str] = set()
        paired_ctas: set[str] = set()
        # Each CTA study gets its best CTA and the NCCT closest to it in time.
        ctas_by_study: dict[str, list[CandidateSeries]] = defaultdict(list)
        for c in ctas:
            ctas_by_study[c.study_instance_uid].append(c)
        for study_uid, study_ctas in ctas_by_study.items():
            cta = _best_cta(study_ctas)
            near = [n for n in nccts if _gap(n, cta) <= pairing_window]
            if not near:
                continue
            ncct = min(
                near,
                key=lambda n: (n.study_instance_uid != study_uid, _gap(n, cta), -n.num_instances),
            )
            paired_ctas.update(c.series_instance_uid for c in study_ctas)
            paired_nccts.add(ncct.series_instance_uid)
            if any(r.study_instance_uid in (study_uid, ncct.study_instance_uid) for r in receiving):
                continue  # a series of this pair's studies is still arriving
            spec = JobSpec(
                study_instance_uid=study_uid,
                patient_key=cta.patient_key,
                ncct_series_uid=ncct.series_instance_uid,
                cta_series_uid=cta.series_instance_uid,
                signature=signature(ncct, cta),
                inputs_received_at=max(ncct.last_received_at, cta.last_received_at),
            )
            decision = _decide(spec, latest_jobs.get(study_uid))
            if decision is not None:
                decisions.append(decision)
        # Partners that never came: report once the window has passed.
        for lone, missing in (
            *((n, MissingSeries.CTA) for n in nccts if n.series_instance_uid not in paired_nccts),
            *((c, MissingSeries.NCCT) for c in ctas if c.series_instance_uid not in paired_ctas),
        ):
            if now - lone.last_received_at < pairing_window:
                continue
            partners = ctas if missing == MissingSeries.CTA else nccts
            if any(_gap(lone, p) <= pairing_window for p in partners):
                continue  # a partner is there; this series was just not the one chosen
            study_uid = lone.study_instance_uid
            latest = latest_jobs.get(study_uid)
            if latest is not None and latest.missing is None:
                continue  # the study was analysed with another pair; nothing is missing
            is_ncct = missing == MissingSeries.CTA
            spec = JobSpec(
                study_instance_uid=study_uid,
                patient_key=lone.patient_key,
                ncct_series_uid=lone.series_instance_uid if is_ncct else None,
                cta_series_uid=None if is_ncct else lone.series_instance_uid,
                signature=signature(lone if is_ncct else None, None if is_ncct else lone),
                missing=missing,
                inputs_received_at=lone.last_received_at,
            )
            decision = _decide(spec, latest)
            if decision is not None:
                decisions.append(decision)
    return decisions
