"""The last 10 seconds of each worker, for ``cluster-ctl top``: requests per second and the
p50 and p99 of request durations.

The master samples each worker's running totals once a second (its requests from the
scoreboard, its duration histogram from the ``--metrics`` counters); a rate or a quantile is the
difference between the newest sample and the one 10 s older. Without ``--metrics`` the
histogram stays empty and only the rate is known.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..request_counters import BUCKETS, DURATION_BUCKETS
from ..scoreboard import REQUESTS, Scoreboard

WINDOW = 10.0  # seconds
INTERVAL = 1.0  # seconds between samples


@dataclass(frozen=True)
class Sample:
    at: float
    requests: int
    buckets: tuple[int, ...]  # the duration histogram, one count per bucket (not cumulative)


@dataclass(frozen=True)
class Recent:
    per_second: float
    p50_ms: float | None  # None: no request finished in the window, or no --metrics
    p99_ms: float | None


class RecentWindow:
    def __init__(self, scoreboard: Scoreboard) -> None:
        self.scoreboard = scoreboard
        self.samples: dict[int, deque[Sample]] = {}  # by pid
        self._next = 0.0

    def sample(self, now: float, workers: Iterable[tuple[int, int]]) -> None:
        """Once per INTERVAL: record each live ``(pid, slot)``; forget workers that are gone."""
        if now < self._next:
            return
        self._next = now + INTERVAL
        seen = set()
        for pid, slot in workers:
            seen.add(pid)
            counters = self.scoreboard.counters(slot)
            sample = Sample(now, self.scoreboard.get(slot, REQUESTS),
                            tuple(counters[DURATION_BUCKETS:DURATION_BUCKETS + len(BUCKETS) + 1]))
            history = self.samples.setdefault(pid, deque())
            history.append(sample)
            while history[0].at < now - WINDOW:
                history.popleft()
        for gone in self.samples.keys() - seen:
            del self.samples[gone]

    def of(self, pid: int) -> Recent:
        history = self.samples.get(pid)
        if not history or len(history) < 2:
            return Recent(0.0, None, None)
        first, last = history[0], history[-1]
        counts = [b - a for a, b in zip(first.buckets, last.buckets, strict=True)]
        return Recent((last.requests - first.requests) / (last.at - first.at),
                      quantile_ms(0.5, counts), quantile_ms(0.99, counts))


def quantile_ms(q: float, counts: Sequence[int]) -> float | None:
    """The ``q`` quantile in milliseconds of a histogram with BUCKETS' bounds, interpolated
    linearly within its bucket as Prometheus's ``histogram_quantile`` does (a quantile in the
    +Inf bucket is reported as the largest finite bound)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if seen + count >= rank and count:
            if index == len(BUCKETS):
                return BUCKETS[-1] * 1000
            lower = BUCKETS[index - 1] if index else 0.0
            return (lower + (BUCKETS[index] - lower) * (rank - seen) / count) * 1000
        seen += count
    return BUCKETS[-1] * 1000
