"""Request counters that never go back: what exited workers counted, plus the live ones.

A worker's counters live in its scoreboard slot, and a slot is zeroed for the next worker that
takes it. So when a worker exits (recycled, crashed, retired by a reload or a scale down) the
master folds its last counts into running totals before the slot can be reused; a scrape
reports those totals plus the live slots, and every counter only ever grows.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..request_counters import COUNTER_WORDS
from ..scoreboard import Scoreboard


class Totals:
    def __init__(self, scoreboard: Scoreboard) -> None:
        self.scoreboard = scoreboard
        self.folded = [0] * COUNTER_WORDS  # what exited workers counted

    def fold(self, slot: int) -> None:
        """The worker in ``slot`` has exited: keep what it counted. Called once per worker,
        after it was reaped (it writes no more) and before the slot is given to another."""
        for index, value in enumerate(self.scoreboard.counters(slot)):
            self.folded[index] += value

    def current(self, live_slots: Iterable[int]) -> list[int]:
        """Every counter word: the folded totals plus each live slot's counts."""
        words = list(self.folded)
        for slot in live_slots:
            for index, value in enumerate(self.scoreboard.counters(slot)):
                words[index] += value
        return words
