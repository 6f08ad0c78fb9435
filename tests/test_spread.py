"""When a worker counts a request as slow and moves its other kept-alive connections away
(worker/spread.py), without processes: the clocks are played by the test."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from flask_cluster.scoreboard import SLOW_MS, Scoreboard
from flask_cluster.worker import spread
from flask_cluster.worker.spread import CPU_READ_EVERY, HELD, SLOW, Spread


class Clocks:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = 1000.0
        self.cpu = 5.0
        monkeypatch.setattr(spread.time, "monotonic", lambda: self.wall)
        monkeypatch.setattr(spread.time, "thread_time", lambda: self.cpu)

    def request(self, tracker: Spread, *, wall: float, cpu: float) -> None:
        tracker.request_started()
        self.wall += wall
        self.cpu += cpu
        tracker.request_ended()


def make_spread() -> tuple[Spread, Scoreboard]:
    board = Scoreboard(2)
    engine: Any = SimpleNamespace(connections=set(), moving=set(), stopping=False,
                                  idle_callbacks=[], batch=None)
    return Spread(engine, hand_back=None, scoreboard=board, slot=0), board  # type: ignore[arg-type]


@pytest.mark.parametrize(("wall", "cpu", "slow"), [
    (0.0002, 0.0002, False),  # a quick request
    (2 * SLOW, SLOW / 20, False),  # quick, but the scheduler ran other processes meanwhile
    (2 * SLOW, 1.2 * SLOW, True),  # the app's own CPU
    (1.5 * HELD, SLOW / 20, True),  # a view waiting on I/O (or sleeping) holds the loop too
])
def test_a_request_is_slow_by_its_cpu_time_or_by_a_long_hold(
        monkeypatch: pytest.MonkeyPatch, wall: float, cpu: float, slow: bool) -> None:
    clocks = Clocks(monkeypatch)
    tracker, board = make_spread()

    clocks.request(tracker, wall=wall, cpu=cpu)

    assert (board.get(0, SLOW_MS) == int(clocks.wall * 1000)) is slow


def test_the_cpu_clock_is_read_at_most_every_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    # A system call: read at every request's start it cost 13 % of a worker's time on
    # pipelined raw WSGI. Requests starting within CPU_READ_EVERY share one read.
    clocks = Clocks(monkeypatch)
    reads = []
    monkeypatch.setattr(spread.time, "thread_time", lambda: reads.append(clocks.wall) or clocks.cpu)
    tracker, board = make_spread()

    for _ in range(5):
        clocks.request(tracker, wall=CPU_READ_EVERY / 10, cpu=CPU_READ_EVERY / 20)
    assert len(reads) == 1
    clocks.wall += CPU_READ_EVERY  # idle a while
    clocks.request(tracker, wall=CPU_READ_EVERY / 10, cpu=CPU_READ_EVERY / 20)
    assert len(reads) == 2

    # The shared read counts the requests before this one too, up to CPU_READ_EVERY of them:
    # a request preempted for 2 * SLOW with little CPU of its own stays quick.
    clocks.request(tracker, wall=2 * SLOW, cpu=SLOW / 20)
    assert board.get(0, SLOW_MS) == 0
