"""Kept-alive connections move away from a request that held the loop (``--threads 1``).

A kept-alive connection stays with its worker, so with ``--threads 1`` its next request waits
for whatever that worker runs, even while another worker idles (the master's holding only
places new connections). So after a request that held the loop for :data:`SLOW` seconds, a
worker hands its *other* idle kept-alive connections back to the master
(:class:`~.migration.HandBack`: what their clients sent meanwhile stays in the kernel's buffer
and goes with the descriptor), and the master passes them to a free worker. The connection
of the slow request stays, so its next slow request holds up no one else.

Only while another worker has been free for :data:`FREE_FOR_MS` (its in-flight count 0 since
then, on the scoreboard): under an even load, where every worker is always busy, nothing
moves back and forth. Costs a clock read at each request's start and end; the rest only after
a slow request.
"""

from __future__ import annotations

import time

from ..scoreboard import FREE_SINCE_MS, HEARTBEAT_MS, IN_FLIGHT, PID, Scoreboard
from .connection import Connection
from .engine import Engine
from .migration import HandBack, movable

SLOW = 0.005  # seconds a request held the loop: the app's time, far beyond the server's own
FREE_FOR_MS = 2  # another worker idle this long is waiting for work, not between two requests
BEATING_MS = 2000  # a heartbeat younger than this: the worker is alive (it beats every 0.5 s)


class Spread:
    def __init__(self, engine: Engine, hand_back: HandBack, scoreboard: Scoreboard,
                 slot: int) -> None:
        self.engine = engine
        self.hand_back = hand_back
        self.scoreboard = scoreboard
        self.slot = slot
        self.started = 0.0
        self.waiting: list[Connection] = []  # idle when a slow request ended

    def request_started(self) -> None:
        self.started = time.monotonic()

    def request_ended(self) -> None:
        """On the loop thread, inside the request's end: the connection that ran it is not
        idle yet, so the idle ones now are exactly the others."""
        now = time.monotonic()
        self.scoreboard.set(self.slot, FREE_SINCE_MS, int(now * 1000))
        if now - self.started < SLOW or self.waiting or self.engine.stopping:
            return
        self.waiting = [conn for conn in self.engine.connections
                        if conn.idle and conn.request_started and movable(conn)]
        if self.waiting:
            self.engine.idle_callbacks.append(self._after_events)

    def _after_events(self) -> None:
        self.engine.idle_callbacks.remove(self._after_events)
        waiting, self.waiting = self.waiting, []
        if self.engine.stopping or not self._another_is_free():
            return
        movable_now = [conn for conn in waiting
                       if conn.idle and movable(conn) and conn not in self.engine.moving]
        self.hand_back.hand_back(movable_now)  # what the channel does not take stays here

    def _another_is_free(self) -> bool:
        board = self.scoreboard
        now = int(time.monotonic() * 1000)
        for slot in range(board.slots):
            if slot == self.slot or not board.get(slot, PID):
                continue
            if board.get(slot, IN_FLIGHT) == 0 \
                    and now - board.get(slot, HEARTBEAT_MS) < BEATING_MS \
                    and now - board.get(slot, FREE_SINCE_MS) >= FREE_FOR_MS:
                return True
        return False
