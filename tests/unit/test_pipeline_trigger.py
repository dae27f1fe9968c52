"""The trigger's decisions (pipeline/trigger.py) on plain rows: pairing, waiting, amending."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from scanet_node.catalog.jobs import CandidateSeries, JobInfo
from scanet_node.pipeline.trigger import plan_jobs, signature

T0 = datetime(2026, 1, 1, 12, 0, 0)
WINDOW = timedelta(hours=1)


def series(
    uid: str,
    study: str,
    role: str | None,
    *,
    at: timedelta = timedelta(0),
    n: int = 30,
    patient: str | None = "p1",
    state: str = "settled",
    thickness: float | None = None,
) -> CandidateSeries:
    return CandidateSeries(
        series_instance_uid=uid,
        study_instance_uid=study,
        patient_key=patient,
        role=role,
        state=state,
        num_instances=n,
        slice_thickness=thickness,
        first_received_at=T0 + at,
        last_received_at=T0 + at + timedelta(seconds=20),
    )


def job(
    study: str, sig: str, *, status: str = "done", job_id: int = 1, attempts: int = 1, **kw: object
) -> JobInfo:
    values: dict[str, object] = {
        "id": job_id,
        "study_instance_uid": study,
        "patient_key": "p1",
        "ncct_series_uid": None,
        "cta_series_uid": None,
        "missing": None,
        "signature": sig,
        "supersedes_id": None,
        "status": status,
        "attempts": attempts,
        "run_after": T0,
        "lease_owner": None,
        "lease_expires_at": None,
        "outcome": "analysed" if status == "done" else None,
        "reason": None,
        "probability": 0.5 if status == "done" else None,
        "positive": None,
        "model": None,
        "sr_sop_instance_uid": "1.2.3" if status == "done" else None,
        "results_dir": None,
        "timings": {},
        "created_at": T0,
        "started_at": None,
        "finished_at": None,
        "inputs_received_at": None,
    }
    values.update(kw)
    return JobInfo(**values)  # type: ignore[arg-type]


def test_a_settled_ncct_and_cta_of_one_study_make_one_job_at_once() -> None:
    ncct, cta = series("n", "s1", "ncct"), series("c", "s1", "cta", at=timedelta(minutes=1))
    other = series("mip", "s1", "other")
    decisions = plan_jobs([ncct, cta, other], {}, T0 + timedelta(minutes=2), WINDOW)
    assert len(decisions) == 1
    spec = decisions[0].spec
    assert (spec.study_instance_uid, spec.ncct_series_uid, spec.cta_series_uid) == ("s1", "n", "c")
    assert spec.missing is None and spec.supersedes_id is None
    assert spec.signature == "ncct=n:30;cta=c:30"


def test_the_cta_in_another_study_pairs_within_the_window_and_takes_the_results() -> None:
    ncct = series("n", "s-ct", "ncct")
    cta = series("c", "s-cta", "cta", at=timedelta(minutes=40))
    decisions = plan_jobs([ncct, cta], {}, T0 + timedelta(minutes=41), WINDOW)
    assert [d.spec.study_instance_uid for d in decisions] == ["s-cta"]
    assert decisions[0].spec.ncct_series_uid == "n"


def test_another_patients_series_never_pair() -> None:
    ncct = series("n", "s1", "ncct", patient="p1")
    cta = series("c", "s2", "cta", patient="p2")
    assert plan_jobs([ncct, cta], {}, T0 + timedelta(minutes=5), WINDOW) == []


def test_a_lone_ncct_waits_for_the_window_then_is_reported_cta_missing() -> None:
    ncct = series("n", "s1", "ncct")
    assert plan_jobs([ncct], {}, T0 + timedelta(minutes=59), WINDOW) == []
    decisions = plan_jobs([ncct], {}, T0 + timedelta(minutes=61), WINDOW)
    assert len(decisions) == 1
    spec = decisions[0].spec
    assert spec.missing == "CTA missing" and spec.study_instance_uid == "s1"
    assert spec.signature == "ncct=n:30;cta=missing"
    # Reported once: the same inputs make nothing new.
    done = {"s1": job("s1", spec.signature, missing="CTA missing")}
    assert plan_jobs([ncct], done, T0 + timedelta(hours=3), WINDOW) == []


def test_a_cta_later_than_the_window_is_not_paired_and_both_are_reported() -> None:
    ncct = series("n", "s1", "ncct")
    cta = series("c", "s2", "cta", at=timedelta(hours=2))
    decisions = plan_jobs([ncct, cta], {}, T0 + timedelta(hours=4), WINDOW)
    assert sorted((d.spec.study_instance_uid, d.spec.missing) for d in decisions) == [
        ("s1", "CTA missing"),
        ("s2", "NCCT missing"),
    ]


def test_unchanged_inputs_make_no_second_job() -> None:
    ncct, cta = series("n", "s1", "ncct"), series("c", "s1", "cta")
    latest = {"s1": job("s1", signature(ncct, cta))}
    assert plan_jobs([ncct, cta], latest, T0 + timedelta(minutes=5), WINDOW) == []
    reprocessed = {"s1": job("s1", signature(ncct, cta) + ";reprocess=2026-01-01T13:00:00")}
    assert plan_jobs([ncct, cta], reprocessed, T0 + timedelta(minutes=5), WINDOW) == []


def test_a_series_that_grew_after_the_result_makes_an_amendment() -> None:
    ncct, cta = series("n", "s1", "ncct"), series("c", "s1", "cta")
    latest = {"s1": job("s1", signature(ncct, cta), job_id=7)}
    grown = replace(cta, num_instances=31)
    decisions = plan_jobs([ncct, grown], latest, T0 + timedelta(minutes=5), WINDOW)
    assert len(decisions) == 1
    assert decisions[0].spec.supersedes_id == 7
    assert decisions[0].spec.signature == "ncct=n:30;cta=c:31"


def test_a_queued_job_follows_new_inputs_and_a_running_one_is_left_to_finish() -> None:
    ncct, cta = series("n", "s1", "ncct"), series("c", "s1", "cta")
    grown = replace(cta, num_instances=31)
    queued = {"s1": job("s1", signature(ncct, cta), status="queued", attempts=0, job_id=3)}
    decisions = plan_jobs([ncct, grown], queued, T0, WINDOW)
    assert [d.update_job_id for d in decisions] == [3]
    running = {"s1": job("s1", signature(ncct, cta), status="running", job_id=3)}
    assert plan_jobs([ncct, grown], running, T0, WINDOW) == []


def test_the_trigger_waits_while_a_series_of_the_pair_is_arriving_or_unclassified() -> None:
    ncct, cta = series("n", "s1", "ncct"), series("c", "s1", "cta")
    arriving = series("x", "s1", None, state="receiving")
    assert plan_jobs([ncct, cta, arriving], {}, T0, WINDOW) == []
    unclassified = series("y", "s1", None)
    assert plan_jobs([ncct, cta, unclassified], {}, T0, WINDOW) == []


def test_the_thinnest_cta_and_the_closest_ncct_are_chosen() -> None:
    thick = series("c5", "s1", "cta", thickness=2.0)
    thin = series("c1", "s1", "cta", thickness=0.625)
    early = series("n-early", "s0", "ncct", at=timedelta(minutes=-50))
    close = series("n-close", "s1", "ncct", at=timedelta(minutes=-2))
    decisions = plan_jobs([thick, thin, early, close], {}, T0 + timedelta(minutes=1), WINDOW)
    assert len(decisions) == 1
    assert (decisions[0].spec.ncct_series_uid, decisions[0].spec.cta_series_uid) == (
        "n-close",
        "c1",
    )
