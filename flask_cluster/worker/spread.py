"""Kept-alive connections move away from a request that held the loop (``--threads 1``).

A kept-alive connection stays with its worker, so with ``--threads 1`` its next request waits
for whatever that worker runs, even while another worker idles (the master's holding only
places new connections). So after a request that took :data:`SLOW` seconds of CPU on the loop,
or held it for :data:`HELD` seconds by the clock, a worker hands its *other* idle kept-alive
connections back to the master (:class:`~.migration.HandBack`: what their clients sent
meanwhile stays in the kernel's buffer and goes with the descriptor), and the master passes
them to a free worker. The connection of the slow request stays, so its next slow request
holds up no one else.

Only while another worker is a better home for them: one that has been free for
:data:`~flask_cluster.scoreboard.IDLE_MS` (its in-flight count 0 since then, on the
scoreboard), or one that has run no slow request for :data:`QUICK_FOR_MS` (it serves only quick
ones, so a request moved there waits at most for a few of those). Waiting for an idle worker
alone left them where they were whenever the others were busy with quick requests: with 4
clients on a fast route and 1 on a 7 ms route over 2 workers, the fast clients that shared the
slow client's worker waited out every slow request, and the fast p99 was 2.4x gunicorn sync's
(benchmarks/RESULTS.md). Under a load where every worker runs slow requests, nothing moves back
and forth. Costs a clock read and a word of shared memory at each request's start (and a read
of the loop thread's CPU clock, a system call, at most every millisecond), a clock read and a
word at its end; the rest only after a slow request. Kept-alive connections that a burst left
on one worker are evened out the same way, on the housekeeping tick (:meth:`Spread.rebalance`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from ..scoreboard import (
    CONNECTIONS,
    FREE_SINCE_MS,
    HEARTBEAT_MS,
    IDLE_MS,
    IN_FLIGHT,
    PID,
    REQUEST_STARTED_US,
    SLOW_MS,
    Scoreboard,
)
from .connection import Connection
from .engine import Engine
from .migration import HandBack, movable

SLOW = 0.005  # seconds of CPU a request took on the loop: the app's, far beyond the server's own
# Seconds a request held the loop by the clock: a view waiting on I/O is slow too, but the clock
# alone also counts the time the scheduler gave the CPU to other processes, a few milliseconds
# on a busy machine; counted as slow, that moved connections back and forth under an even load
# (68 moves in 5 s of Flask hello over 32 kept-alive connections, worker shares 61 / 39 %).
HELD = 0.020
# The thread's CPU clock is a system call (no vDSO for it: 0.8 us here, 13 % of a worker's
# time on pipelined raw WSGI when read at every request's start), so a request that starts
# within this many seconds of the last read takes that read as its start: its CPU time may
# then count up to this much of the requests before it, a rule of 4-5 ms instead of 5.
CPU_READ_EVERY = 0.001
QUICK_FOR_MS = 250  # another worker with no slow request this long serves quick ones only
BEATING_MS = 2000  # a heartbeat younger than this: the worker is alive (it beats every 0.5 s)
AHEAD = 2  # open connections more than another worker's before some go elsewhere


def others_beating(board: Scoreboard, slot: int, now_ms: int) -> Iterator[int]:
    """The slots of the other workers that are alive (a heartbeat within BEATING_MS)."""
    for other in range(board.slots):
        if other != slot and board.get(other, PID) \
                and now_ms - board.get(other, HEARTBEAT_MS) < BEATING_MS:
            yield other


class Spread:
    def __init__(self, engine: Engine, hand_back: HandBack, scoreboard: Scoreboard,
                 slot: int) -> None:
        self.engine = engine
        self.hand_back = hand_back
        self.scoreboard = scoreboard
        self.slot = slot
        # Our words, written by index at every request's start and end (not through
        # Scoreboard.set: two calls fewer each time, on the path of every request).
        self.words = scoreboard.words
        base = scoreboard.base(slot)
        self._started_us = base + REQUEST_STARTED_US
        self._free_since_ms = base + FREE_SINCE_MS
        self.started = 0.0
        self.cpu_started = 0.0
        self.cpu_read_at = float("-inf")  # wall time of the last read of the CPU clock
        self.waiting: list[Connection] = []  # idle when a slow request ended

    def request_started(self) -> None:
        """Also tells the master when (its choice queues a connection behind a request only
        while that request is young, master/choice.py): one clock read serves both. The
        thread's CPU clock too (at most every CPU_READ_EVERY), so that a request preempted by
        the scheduler is not slow."""
        self.started = now = time.monotonic()
        if now - self.cpu_read_at >= CPU_READ_EVERY:
            self.cpu_read_at = now
            self.cpu_started = time.thread_time()
        self.words[self._started_us] = int(now * 1_000_000)

    def request_ended(self) -> None:
        """On the loop thread, inside the request's end: the connection that ran it is not
        idle yet, so the idle ones now are exactly the others."""
        now = time.monotonic()
        now_ms = int(now * 1000)
        self.words[self._free_since_ms] = now_ms
        held = now - self.started
        if self.engine.batch is not None:
            self.engine.batch.request_ended(held, now)
        if held < SLOW or (held < HELD and time.thread_time() - self.cpu_started < SLOW):
            return
        self.scoreboard.set(self.slot, SLOW_MS, now_ms)
        if self.waiting or self.engine.stopping:
            return
        self.waiting = self._idle_movable(self.engine.connections)
        if self.waiting:
            self.engine.idle_callbacks.append(self._after_events)

    def _after_events(self) -> None:
        self.engine.idle_callbacks.remove(self._after_events)
        waiting, self.waiting = self.waiting, []
        if self.engine.stopping or not self._another_is_better():
            return
        # what the channel does not take stays here
        self.hand_back.hand_back(self._idle_movable(waiting))

    def _idle_movable(self, conns: Iterable[Connection]) -> list[Connection]:
        """Those of ``conns`` that may move now: kept-alive ones between two requests, not TLS
        or closing, not already on their way."""
        moving = self.engine.moving
        return [conn for conn in conns if conn.idle and conn.request_started and movable(conn)
                and conn not in moving]

    def _another_is_better(self) -> bool:
        return any(True for _slot in self._better_homes())

    def _better_homes(self) -> Iterator[int]:
        """The slots of the other workers that are a better home for an idle kept-alive
        connection than behind our next slow request."""
        board = self.scoreboard
        now = int(time.monotonic() * 1000)
        for slot in others_beating(board, self.slot, now):
            free_since = board.get(slot, FREE_SINCE_MS)
            if board.get(slot, IN_FLIGHT) == 0 and now - free_since >= IDLE_MS:
                yield slot  # idle, waiting for work
            elif now - board.get(slot, SLOW_MS) >= QUICK_FOR_MS and now - free_since < SLOW * 1000:
                yield slot  # busy with quick requests only (and not stuck in a long one)

    def rebalance(self, _now: float) -> None:
        """On each housekeeping tick: with :data:`AHEAD` more connections open than another
        worker that is a better home (as above), hand back half the difference, idle ones.
        A burst of kept-alive connects that arrives while every worker is busy is held by the
        master and released to the first worker that frees up (or, with ``shared``, accepted
        by whichever the kernel wakes): 2 s into `wrk -c32` against 2 workers, 4 of 6 runs
        had 28 or more of the 32 on one worker, and nothing moved them while no request was
        slow."""
        if self.waiting or self.engine.stopping:
            return
        board = self.scoreboard
        mine = board.get(self.slot, CONNECTIONS)
        fewest = min((board.get(slot, CONNECTIONS) for slot in self._better_homes()),
                     default=mine)
        if mine - fewest < AHEAD:
            return
        idle = self._idle_movable(self.engine.connections)
        self.hand_back.hand_back(idle[:(mine - fewest) // 2])
