"""``scanet-node doctor``'s decision: which recent studies have no result sent, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from scanet_node.catalog.jobs import JobInfo
from scanet_node.catalog.overview import Activity, DeliveryState
from scanet_node.catalog.store import SeriesSummary, StudySummary
from scanet_node.pipeline.doctor import STATES, clock, unanswered

NOW = datetime(2026, 12, 6, 12, 0, 0)
SETTLE, WINDOW, MAX = 10.0, 3600.0, 3


def series(
    uid: str, role: str | None, *, state: str = "settled", ago: float = 600
) -> SeriesSummary:
    at = NOW - timedelta(seconds=ago)
    return SeriesSummary(
        series_instance_uid=uid, modality="CT", series_number=1, series_description=f"d-{uid}",
        image_type=None, contrast_agent=None, slice_thickness=1.0, sop_class_uid=None,
        num_instances=10, state=state, calling_aet="CT01", first_received_at=at,
        last_received_at=at, settled_at=None if state != "settled" else at, role=role,
    )  # fmt: skip


def study(uid: str, *members: SeriesSummary) -> StudySummary:
    last = max(s.last_received_at for s in members)
    return StudySummary(uid, "20261206", None, 10 * len(members), last, last, list(members))


def job(job_id: int, study_uid: str, status: str, **kw: object) -> JobInfo:
    values: dict[str, object] = dict(
        id=job_id, study_instance_uid=study_uid, patient_key="k", ncct_series_uid="n",
        cta_series_uid="c", missing=None, signature="s", supersedes_id=None, status=status,
        attempts=1, run_after=NOW, lease_owner=None, lease_expires_at=None, outcome=None,
        reason=None, probability=None, positive=None, model=None, sr_sop_instance_uid=None,
        results_dir=None, timings={}, created_at=NOW - timedelta(minutes=5),
        started_at=NOW - timedelta(minutes=4), finished_at=None, inputs_received_at=None,
    )  # fmt: skip
    values.update(kw)
    return JobInfo(**values)  # type: ignore[arg-type]


def delivery(job_id: int, status: str, **kw: object) -> DeliveryState:
    values: dict[str, object] = dict(
        job_id=job_id, destination="pacs", status=status, attempts=2,
        next_attempt_at=NOW + timedelta(minutes=1), last_detail="connection refused",
    )  # fmt: skip
    values.update(kw)
    return DeliveryState(**values)  # type: ignore[arg-type]


def explain(
    studies: list[StudySummary],
    jobs: Sequence[JobInfo] = (),
    deliveries: Sequence[DeliveryState] = (),
) -> dict[str, tuple[str, str]]:
    found = unanswered(
        Activity(studies, list(jobs), list(deliveries)), NOW,
        settle_seconds=SETTLE, pairing_window_seconds=WINDOW, max_attempts=MAX,
    )  # fmt: skip
    assert all(w.state in STATES for w in found)
    return {w.study_instance_uid: (w.state, w.why) for w in found}


PAIR = (series("n", "ncct"), series("c", "cta"))


def test_a_study_whose_result_every_destination_acknowledged_is_not_listed() -> None:
    done = job(1, "S", "done", outcome="analysed", sr_sop_instance_uid="1.2")
    assert explain([study("S", *PAIR)], [done], [delivery(1, "sent")]) == {}
    # ... nor one answered by an earlier job while its amendment runs
    amend = job(2, "S", "running", supersedes_id=1)
    assert explain([study("S", *PAIR)], [done, amend], [delivery(1, "sent")]) == {}


def test_before_a_job_receiving_classifying_waiting_or_nothing_to_analyse() -> None:
    receiving = study("R", series("r", None, state="receiving", ago=2))
    classifying = study("C", series("x", None))
    lone_ncct = study("N", series("n1", "ncct", ago=600))
    scouts = study("O", series("o1", "other"), series("o2", "other"))
    got = explain([receiving, classifying, lone_ncct, scouts])
    assert got["R"][0] == "receiving"
    assert f"settles at {clock(NOW + timedelta(seconds=SETTLE - 2))}" in got["R"][1]
    assert got["C"][0] == "classifying"
    state, why = got["N"]
    until = NOW - timedelta(seconds=600) + timedelta(seconds=WINDOW)
    assert state == "waiting_for_partner"
    assert f"waiting for a CTA of the patient until {clock(until)}" in why
    assert "CTA missing" in why
    assert got["O"][0] == "nothing_to_analyse" and "'d-o1', 'd-o2'" in got["O"][1]


@pytest.mark.parametrize(
    ("status", "kw", "deliveries", "state", "words"),
    [
        ("queued", {"attempts": 0}, [], "queued", "queued since"),
        ("queued", {"attempts": 2, "reason": "OSError: disk full"}, [], "retrying",
         "attempt 2 of 3 failed (OSError: disk full); next try at"),
        ("running", {"attempts": 1}, [], "running", "running since"),
        ("failed", {"sr_sop_instance_uid": "1.2", "reason": "the worker stopped ... 3 times"},
         [delivery(1, "sent")], "failed_answered", "failed and answered"),
        ("failed", {"reason": "no model to run"}, [], "failed_unanswered",
         "no report could be made: no model to run"),
        ("failed", {"sr_sop_instance_uid": "1.2"}, [delivery(1, "pending")], "delivery_pending",
         "delivery to pacs pending, try 3 at"),
        ("done", {"sr_sop_instance_uid": "1.2"}, [delivery(1, "pending")], "delivery_pending",
         "last try: connection refused"),
        ("done", {"sr_sop_instance_uid": "1.2"}, [delivery(1, "failed")], "delivery_failed",
         "`scanet-node resend 1`"),
        ("done", {"sr_sop_instance_uid": "1.2"}, [], "no_destination", "no [[destinations]]"),
    ],
)  # fmt: skip
def test_a_study_with_a_job_stands_where_its_newest_job_stands(
    status: str, kw: dict[str, object], deliveries: list[DeliveryState], state: str, words: str
) -> None:
    got = explain([study("S", *PAIR)], [job(1, "S", status, **kw)], deliveries)
    assert got["S"][0] == state
    assert words in got["S"][1]


def test_an_ncct_filed_under_its_own_study_stands_where_its_pair_stands() -> None:
    ncct_study = study("N", series("n", "ncct"))
    cta_study = study("C", series("c", "cta"))
    running = job(1, "C", "running")
    got = explain([ncct_study, cta_study], [running])
    assert got["N"][0] == "running" and "paired with study C" in got["N"][1]
    assert got["C"][0] == "running" and "paired" not in got["C"][1]
    # once study C's result is acknowledged, neither is listed
    done = replace(running, status="done", sr_sop_instance_uid="1.2")
    assert explain([ncct_study, cta_study], [done], [delivery(1, "sent")]) == {}
