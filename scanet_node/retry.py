"""When to try again: the retry policies of deliveries and of analysis jobs, as pure functions.

Both back off exponentially from ``retry_initial_seconds`` to ``retry_max_seconds`` of their
section (``[delivery]``, ``[pipeline]``); a delivery is given up after ``give_up_after_hours``,
a job after ``job_max_attempts`` attempts (whether it raised or its worker died).
"""

from __future__ import annotations

from datetime import datetime, timedelta


def next_attempt_delay(attempts: int, *, initial: float = 5.0, maximum: float = 300.0) -> float:
    """Seconds to wait after ``attempts`` failed attempts (>= 1): ``initial * 2**(attempts-1)``,
    capped at ``maximum``."""
    if attempts < 1:
        raise ValueError(f"attempts counts failed attempts and starts at 1, got {attempts}")
    # The exponent is capped so a long outage cannot overflow the float.
    return float(min(maximum, initial * 2.0 ** min(attempts - 1, 64)))


def should_give_up(first_attempt_at: datetime, now: datetime, give_up_after: timedelta) -> bool:
    """True once ``give_up_after`` has passed since the first attempt (times in UTC)."""
    return now - first_attempt_at >= give_up_after


def job_retry_delay(attempts: int, *, initial: float = 30.0, maximum: float = 600.0) -> float:
    """Seconds before a job that failed on its ``attempts``-th attempt (>= 1) runs again.

    The deliveries' backoff with the ``[pipeline]`` defaults: 30 s, 60 s, 120 s ... up to
    10 minutes, so a study that failed on a passing problem (a full disk, a busy database) is
    answered within minutes and one that fails every time does not keep a worker busy.
    """
    return next_attempt_delay(attempts, initial=initial, maximum=maximum)


def job_attempts_left(attempts: int, max_attempts: int) -> bool:
    """Whether a job that has started ``attempts`` times may start again."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    return attempts < max_attempts
