"""The retry policies of result delivery and of jobs, and how C-STORE statuses are classified."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scanet_node.results.deliver import classify_store_status
from scanet_node.retry import (
    job_attempts_left,
    job_retry_delay,
    next_attempt_delay,
    should_give_up,
)


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    delays = [next_attempt_delay(n) for n in range(1, 10)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def test_backoff_with_other_bounds() -> None:
    assert next_attempt_delay(1, initial=1.0, maximum=3600.0) == 1.0
    assert next_attempt_delay(4, initial=1.0, maximum=3600.0) == 8.0
    assert next_attempt_delay(3, initial=30.0, maximum=60.0) == 60.0


def test_backoff_after_a_very_long_outage_stays_at_the_cap() -> None:
    assert next_attempt_delay(10_000) == 300.0


@pytest.mark.parametrize("attempts", [0, -1])
def test_backoff_needs_a_failed_attempt(attempts: int) -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        next_attempt_delay(attempts)


def test_give_up_once_the_window_has_passed() -> None:
    first = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    window = timedelta(hours=24)
    assert not should_give_up(first, first, window)
    assert not should_give_up(first, first + window - timedelta(seconds=1), window)
    assert should_give_up(first, first + window, window)
    assert should_give_up(first, first + timedelta(days=3), window)


@pytest.mark.parametrize("code", [0x0000, 0xB000, 0xB006, 0xB007, 0x0111])
def test_stored_statuses(code: int) -> None:
    assert classify_store_status(code) is None


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0xA700, ("refused", False)),
        (0xA7FF, ("refused", False)),
        (0x0122, ("refused", True)),
        (0x0124, ("refused", True)),
        (0xA900, ("failed", True)),
        (0xC000, ("failed", True)),
        (0xC210, ("failed", True)),
        (0x0110, ("failed", False)),
    ],
)
def test_failure_statuses(code: int, expected: tuple[str, bool]) -> None:
    assert classify_store_status(code) == expected


def test_job_backoff_doubles_from_the_pipelines_initial_up_to_its_cap() -> None:
    assert [job_retry_delay(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    assert [job_retry_delay(n, initial=2.0, maximum=5.0) for n in (1, 2, 3)] == [2, 4, 5]
    assert job_retry_delay(10_000) == 600.0
    with pytest.raises(ValueError, match="starts at 1"):
        job_retry_delay(0)


def test_a_job_may_start_again_until_it_has_used_its_attempts() -> None:
    assert [job_attempts_left(n, 3) for n in (0, 1, 2, 3, 4)] == [True, True, True, False, False]
    with pytest.raises(ValueError, match="max_attempts"):
        job_attempts_left(1, 0)
