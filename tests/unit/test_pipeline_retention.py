"""The purge decision (pipeline/retention.py): a pure function of rows and settings."""

from __future__ import annotations

from datetime import datetime, timedelta

from scanet_node.catalog.retention import SENDING, RetentionJob, RetentionStudy
from scanet_node.config import RetentionSettings
from scanet_node.pipeline.retention import Held, PurgeGroup, plan_purge

NOW = datetime(2026, 12, 1, 12, 0, 0)
KEEP_30 = RetentionSettings(days=30)
AFTER_DELIVERY = RetentionSettings(days=30, purge_after_delivery=True)


def study(uid: str, age_days: float, *, pending: bool = False) -> RetentionStudy:
    return RetentionStudy(uid, NOW - timedelta(days=age_days), pending)


def job(
    job_id: int,
    filed_in: str,
    status: str = "done",
    *,
    inputs: tuple[str, ...] = (),
    deliveries: tuple[str, ...] = ("sent",),
) -> RetentionJob:
    return RetentionJob(job_id, filed_in, status, frozenset((filed_in, *inputs)), deliveries)


def test_a_study_older_than_days_is_purged_and_a_younger_one_kept() -> None:
    plan = plan_purge([study("old", 30.01), study("young", 29.99)], [], NOW, KEEP_30)
    assert plan.purge == [PurgeGroup(("old",), "age")]
    assert plan.held == []
    # Fractions of a day count: 1e-5 days is under a second.
    tiny = RetentionSettings(days=1e-5)
    assert plan_purge([RetentionStudy("s", NOW - timedelta(seconds=1))], [], NOW, tiny).purge == [
        PurgeGroup(("s",), "age")
    ]


def test_age_wins_over_pending_and_failed_deliveries() -> None:
    studies = [study("a", 31), study("b", 31)]
    jobs = [job(1, "a", deliveries=("pending", "failed")), job(2, "b", "failed", deliveries=())]
    plan = plan_purge(studies, jobs, NOW, KEEP_30)
    assert plan.purge == [PurgeGroup(("a",), "age"), PurgeGroup(("b",), "age")]


def test_an_active_job_holds_its_study_whatever_its_age() -> None:
    for status in ("queued", "running"):
        plan = plan_purge([study("a", 90)], [job(1, "a"), job(2, "a", status)], NOW, KEEP_30)
        assert plan.purge == []
        assert plan.held == [Held(("a",), "an analysis is queued or running")]


def test_results_being_sent_hold_the_study() -> None:
    plan = plan_purge([study("a", 90)], [job(1, "a", deliveries=(SENDING,))], NOW, KEEP_30)
    assert plan.purge == []
    assert plan.held == [Held(("a",), "results are being sent")]


def test_the_ncct_study_of_an_active_job_filed_elsewhere_is_kept() -> None:
    # The NCCT came in its own study (old), the CTA in another; the job is filed in the CTA's.
    studies = [study("ncct-study", 40), study("cta-study", 1)]
    running = [job(7, "cta-study", "running", inputs=("ncct-study",))]
    plan = plan_purge(studies, running, NOW, AFTER_DELIVERY)
    assert plan.purge == [] and plan.held == []  # the group is not all old: nothing to say
    both_old = [study("ncct-study", 40), study("cta-study", 40)]
    plan = plan_purge(both_old, running, NOW, KEEP_30)
    assert plan.held == [Held(("cta-study", "ncct-study"), "an analysis is queued or running")]


def test_linked_studies_are_purged_together_once_all_are_old() -> None:
    studies = [study("ncct-study", 31), study("cta-study", 29)]
    done = [job(7, "cta-study", inputs=("ncct-study",), deliveries=("pending",))]
    # The NCCT's study alone is old: it waits for its partner. (Purged alone, the other
    # way round, the CTA's study would leave the NCCT to be reported "CTA missing".)
    assert plan_purge(studies, done, NOW, KEEP_30).purge == []
    later = NOW + timedelta(days=2)
    assert plan_purge(studies, done, later, KEEP_30).purge == [
        PurgeGroup(("cta-study", "ncct-study"), "age")
    ]


def test_after_delivery_a_delivered_study_goes_at_once() -> None:
    studies = [study("a", 0.01), study("b", 0.01)]
    jobs = [
        job(1, "a", deliveries=("failed",)),
        job(2, "a", deliveries=("sent", "sent")),  # the newest job decides
        job(3, "b", deliveries=("sent",)),
    ]
    assert plan_purge(studies, jobs, NOW, KEEP_30).purge == []  # the setting is off
    assert plan_purge(studies, jobs, NOW, AFTER_DELIVERY).purge == [
        PurgeGroup(("a",), "delivered"),
        PurgeGroup(("b",), "delivered"),
    ]


def test_after_delivery_needs_every_delivery_of_the_newest_job_sent() -> None:
    studies = [study(u, 0.01) for u in ("pending", "failed", "none", "not-done", "no-job")]
    jobs = [
        job(1, "pending", deliveries=("sent", "pending")),
        job(2, "failed", deliveries=("sent", "failed")),
        job(3, "none", deliveries=()),  # no destination: nothing was delivered
        job(4, "not-done", "failed", deliveries=()),
        job(5, "not-done", "done", deliveries=("sent",)),
        job(6, "not-done", "failed", deliveries=()),  # newest: the analysis failed again
    ]
    assert plan_purge(studies, jobs, NOW, AFTER_DELIVERY).purge == []


def test_after_delivery_waits_for_series_still_receiving_or_unclassified() -> None:
    jobs = [job(1, "a")]
    assert plan_purge([study("a", 0.01, pending=True)], jobs, NOW, AFTER_DELIVERY).purge == []
    # ... in any study of the group, the NCCT's too.
    studies = [study("a", 0.01), study("n", 0.01, pending=True)]
    linked = [job(1, "a", inputs=("n",))]
    assert plan_purge(studies, linked, NOW, AFTER_DELIVERY).purge == []
    studies = [study("a", 0.01), study("n", 0.01)]
    assert plan_purge(studies, linked, NOW, AFTER_DELIVERY).purge == [
        PurgeGroup(("a", "n"), "delivered")
    ]


def test_a_study_without_jobs_is_kept_until_it_is_old() -> None:
    assert plan_purge([study("a", 0.01)], [], NOW, AFTER_DELIVERY).purge == []


def test_jobs_naming_studies_no_longer_catalogued_are_ignored() -> None:
    # An input study already purged (or never catalogued) neither links nor holds anything.
    jobs = [job(1, "a", inputs=("gone",))]
    assert plan_purge([study("a", 0.01)], jobs, NOW, AFTER_DELIVERY).purge == [
        PurgeGroup(("a",), "delivered")
    ]
    active_elsewhere = [job(2, "gone", "running", inputs=("a",))]
    assert plan_purge([study("a", 40)], active_elsewhere, NOW, KEEP_30).purge == []
