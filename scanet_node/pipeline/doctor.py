"""``scanet-node doctor``: which recent studies have no result sent yet, and why.

A pure decision on the catalog's rows (:meth:`Overview.activity`), so an administrator sees
at a glance that nothing is stuck: a study is either answered (a job of it is done and every
delivery of its report is acknowledged), or it is listed with where it stands, in the order
the node works: receiving, classifying, waiting for its partner series, queued, running,
retrying, failed, delivery pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from scanet_node.catalog.jobs import JobInfo
from scanet_node.catalog.models import DeliveryStatus, JobStatus, Role, SeriesState
from scanet_node.catalog.overview import Activity, DeliveryState
from scanet_node.catalog.store import StudySummary

#: The states of :class:`Waiting`, in the order a study passes through them.
STATES = (
    "receiving",
    "classifying",
    "waiting_for_partner",
    "nothing_to_analyse",
    "queued",
    "running",
    "retrying",
    "failed_answered",
    "failed_unanswered",
    "delivery_pending",
    "delivery_failed",
    "no_destination",
)


@dataclass(frozen=True)
class Waiting:
    """A study with no result sent, and why."""

    study_instance_uid: str
    last_received_at: datetime
    state: str  # one of STATES
    why: str
    #: When the state ends on its own (settling, the pairing window, the next try), if known.
    until: datetime | None = None
    job_id: int | None = None


def clock(when: datetime) -> str:
    """A catalog time (naive UTC) as the local ``HH:MM``, as people read it."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return aware.astimezone().strftime("%H:%M")


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answered(job: JobInfo, deliveries: Sequence[DeliveryState]) -> bool:
    return (
        job.status == JobStatus.DONE
        and bool(deliveries)
        and all(d.status == DeliveryStatus.SENT for d in deliveries)
    )


def _job_state(
    study: StudySummary,
    job: JobInfo,
    deliveries: Sequence[DeliveryState],
    max_attempts: int,
    where: str = "",
) -> Waiting:
    def waiting(state: str, why: str, until: datetime | None = None) -> Waiting:
        return Waiting(
            study.study_instance_uid, study.last_received_at, state, why + where, until, job.id
        )

    if job.status == JobStatus.QUEUED and job.attempts == 0:
        return waiting("queued", f"job {job.id} queued since {clock(job.created_at)}")
    if job.status == JobStatus.QUEUED:
        return waiting(
            "retrying",
            f"job {job.id}: attempt {job.attempts} of {max_attempts} failed "
            f"({_short(job.reason)}); next try at {clock(job.run_after)}",
            job.run_after,
        )
    if job.status == JobStatus.RUNNING:
        since = clock(job.started_at) if job.started_at else "?"
        return waiting("running", f"job {job.id} running since {since} (attempt {job.attempts})")
    pending = [d for d in deliveries if d.status == DeliveryStatus.PENDING]
    failed = [d for d in deliveries if d.status == DeliveryStatus.FAILED]
    if job.status == JobStatus.FAILED:
        if deliveries and not pending and not failed:
            return waiting(
                "failed_answered",
                f"job {job.id} failed and answered: the PACS has the report that the analysis "
                f"failed ({_short(job.reason)})",
            )
        if not job.sr_sop_instance_uid:
            return waiting(
                "failed_unanswered",
                f"job {job.id} failed and no report could be made: {_short(job.reason)}",
            )
    if pending:
        d = min(pending, key=lambda x: x.next_attempt_at)
        last = f"; last try: {_short(d.last_detail, 100)}" if d.last_detail else ""
        return waiting(
            "delivery_pending",
            f"job {job.id}: delivery to {d.destination} pending, try {d.attempts + 1} at "
            f"{clock(d.next_attempt_at)}{last}",
            d.next_attempt_at,
        )
    if failed:
        d = failed[0]
        return waiting(
            "delivery_failed",
            f"job {job.id}: delivery to {d.destination} failed for good after {d.attempts} "
            f"tries ({_short(d.last_detail, 100)}); `scanet-node resend {job.id}` tries again",
        )
    return waiting("no_destination", f"job {job.id} is done but no [[destinations]] is configured")


def unanswered(
    activity: Activity,
    now: datetime,
    *,
    settle_seconds: float,
    pairing_window_seconds: float,
    max_attempts: int,
) -> list[Waiting]:
    """The studies of ``activity`` that have no result sent, each with where it stands.

    ``now`` and the catalog's times are naive UTC. A study whose series went into another
    study's job (an NCCT paired with a CTA filed under its own study) stands where that job
    stands.
    """
    by_job: dict[int, list[DeliveryState]] = {}
    for d in activity.deliveries:
        by_job.setdefault(d.job_id, []).append(d)
    out: list[Waiting] = []
    for study in activity.studies:
        uid = study.study_instance_uid
        own = [j for j in activity.jobs if j.study_instance_uid == uid]
        if any(_answered(j, by_job.get(j.id, [])) for j in own):
            continue
        if own:
            out.append(_job_state(study, own[-1], by_job.get(own[-1].id, []), max_attempts))
            continue
        series_uids = {s.series_instance_uid for s in study.series}
        elsewhere = [
            j
            for j in activity.jobs
            if j.ncct_series_uid in series_uids or j.cta_series_uid in series_uids
        ]
        if elsewhere:
            job = elsewhere[-1]
            if not any(_answered(j, by_job.get(j.id, [])) for j in elsewhere):
                where = f" (paired with study {job.study_instance_uid}, where results are filed)"
                out.append(_job_state(study, job, by_job.get(job.id, []), max_attempts, where))
            continue
        out.append(_before_a_job(study, now, settle_seconds, pairing_window_seconds))
    return out


def _before_a_job(
    study: StudySummary, now: datetime, settle_seconds: float, pairing_window_seconds: float
) -> Waiting:
    uid, last = study.study_instance_uid, study.last_received_at
    receiving = [s for s in study.series if s.state != SeriesState.SETTLED]
    if receiving:
        settles = max(s.last_received_at for s in receiving) + timedelta(seconds=settle_seconds)
        return Waiting(
            uid,
            last,
            "receiving",
            f"{len(receiving)} series still receiving; settles at {clock(settles)} if "
            "nothing more arrives, or a moment after its sender is done",
            settles,
        )
    if any(s.role is None for s in study.series):
        return Waiting(uid, last, "classifying", "its settled series are being classified")
    nccts = [s for s in study.series if s.role == Role.NCCT]
    ctas = [s for s in study.series if s.role == Role.CTA]
    window = timedelta(seconds=pairing_window_seconds)
    if bool(nccts) != bool(ctas):
        have, lacking = ("an NCCT", "a CTA") if nccts else ("a CTA", "an NCCT")
        until = max(s.last_received_at for s in (nccts or ctas)) + window
        return Waiting(
            uid,
            last,
            "waiting_for_partner",
            f"has {have}; waiting for {lacking} of the patient until {clock(until)}, "
            f"then reported as {lacking.split()[1]} missing",
            until,
        )
    if not nccts:
        kinds = ", ".join(
            sorted({f"'{s.series_description or s.modality or '?'}'" for s in study.series})
        )
        return Waiting(
            uid,
            last,
            "nothing_to_analyse",
            f"no NCCT or CTA among its {len(study.series)} series ({_short(kinds, 120)}): "
            "nothing to analyse; see `scanet-node study UID` for each series' reason",
        )
    return Waiting(uid, last, "queued", "NCCT and CTA settled; the job is made at the next sweep")
