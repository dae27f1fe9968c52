"""Seconds a stage took, as the jobs' and the registrations' ``timings`` record them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(timings: dict[str, float], key: str, *, ndigits: int | None = None) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[key]`` (from 0 when absent), rounded to
    ``ndigits`` when given. A block that raises records nothing."""
    start = time.perf_counter()
    yield
    seconds = timings.get(key, 0.0) + time.perf_counter() - start
    timings[key] = seconds if ndigits is None else round(seconds, ndigits)


class Stopwatch:
    """Seconds since it started (:meth:`total`) and since the last lap (:meth:`lap`)."""

    def __init__(self) -> None:
        self.started = self._lap_start = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the last lap (or the start); a new lap starts now."""
        now = time.perf_counter()
        seconds, self._lap_start = now - self._lap_start, now
        return seconds

    def total(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.started
