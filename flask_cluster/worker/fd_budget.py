"""How many connections a worker may hold within its descriptor limit, and what it does there.

A process at ``RLIMIT_NOFILE`` cannot take one more descriptor: ``accept()`` fails with
``EMFILE``, and, worse, a descriptor the master passes over ``SCM_RIGHTS`` is dropped by the
kernel (``MSG_CTRUNC``), which resets its client with no answer. So a worker holds its
connections under a cap below the limit, keeping a reserve for the files the app opens (a
spooled request body, a file it sends, a database connection), and at the cap it sheds its
oldest idle connections, as nginx does when its ``worker_connections`` run out: kept-alive ones
between two requests first (HTTP lets a server close those at any time), then ones that have
sent nothing for :data:`QUIET` seconds. A connection that no shedding can make room for is not
taken: it waits in the hand-off channel, where the master sees it as not taken and passes new
connections to other workers, or in the listen backlog (``shared``, ``reuseport``).
"""

from __future__ import annotations

import heapq
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from .connection import Connection
from .engine import Engine

log = logging.getLogger("flask_cluster.worker")

RESERVE_MIN = 8  # descriptors kept for the app: at least this many,
RESERVE_PER_THREAD = 2  # plus this many per app thread (a spooled body, a file being sent),
RESERVE_SHARE = 16  # or one sixteenth of the limit if that is more
QUIET = 1.0  # seconds a connection that has not sent its first request is left to send it
LOG_EVERY = 60.0  # seconds between two warnings of the same kind


def descriptor_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE`` (0: unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else soft


def reserve_for(limit: int, threads: int) -> int:
    """Descriptors a worker leaves to the app out of ``limit``."""
    return max(RESERVE_MIN + RESERVE_PER_THREAD * threads, limit // RESERVE_SHARE)


def open_descriptors() -> int | None:
    """How many descriptors this process has open; None when that cannot be read (no free
    descriptor to list them with, or neither ``/proc`` nor ``/dev/fd``)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the one that lists them
        except OSError:
            continue
    return None


class FdBudget:
    """The connections one worker's descriptors allow (its *cap*), kept by shedding idle
    connections. ``--max-connections``, when lower, is the engine's own limit, met as always
    (503 for a passed connection, the backlog for one not accepted yet): shedding is for
    descriptors that run out, not for a limit the operator chose."""

    def __init__(self, engine: Engine, threads: int, max_connections: int) -> None:
        self.engine = engine
        self.limit = descriptor_limit()
        self.reserve = reserve_for(self.limit, threads)
        self.max_connections = max_connections
        self.cap = sys.maxsize  # no descriptor limit
        self.held: tuple[Any, Callable[[], object]] | None = None  # a reader waiting for room
        self._warned = {"shed": 0.0, "dropped": 0.0}
        self._since_warned = {"shed": 0, "dropped": 0}
        self.accepts = False  # accepts on a listener itself (shared, reuseport)
        self.measure()
        self.measured_cap = self.cap  # at start; lowered after a drop until measured again
        engine.tick_callbacks.append(self._tick)

    def measure(self) -> None:
        """Set the cap from what is open now besides connections (the worker's own channels,
        what the app opened at start): call once the worker is ready, and after a drop."""
        if not self.limit:
            return
        connections = len(self.engine.connections)
        in_use = open_descriptors()
        others = (self.limit if in_use is None else in_use) - connections
        self.cap = max(1, self.limit - self.reserve - others)
        self.engine.max_connections = min(self.max_connections, self.cap)

    def room(self) -> int:
        """Connections that can be taken now without going over the cap."""
        return self.cap - len(self.engine.connections)

    def make_room(self, wanted: int) -> bool:
        """Shed idle connections until ``wanted`` more fit; False if that many do not."""
        short = wanted - self.room()
        if short <= 0:
            return True
        victims = self._idle(short)
        for conn in victims:
            conn.close()
        if victims:
            self._warn("shed", len(victims), "closed %d idle connection(s), the oldest first: "
                       "at the connection cap (%d within ulimit -n %d)")
        return len(victims) >= short

    def _idle(self, count: int) -> list[Connection]:
        """The ``count`` connections best shed: kept-alive ones between requests, the longest
        idle first, then those that have sent nothing for :data:`QUIET` seconds."""
        quiet_since = time.monotonic() - QUIET
        moving = self.engine.moving
        candidates = [conn for conn in self.engine.connections
                      if conn.idle and not conn.lingering and conn not in moving
                      and (conn.request_started or conn.last_active < quiet_since)]
        return heapq.nsmallest(count, candidates,
                               key=lambda conn: (not conn.request_started, conn.last_active))

    def shedding(self, on_connection: Callable[[int], None]) -> Callable[[int], None]:
        """The engine's ``on_connection`` (+1 as a connection opens, -1 as it closes) of a
        worker that accepts on a listener itself, shedding at the cap as it accepts: its engine
        stops accepting at :attr:`Engine.max_connections`, and the backlog would hold new
        clients behind idle ones. (A hand-off channel held for room is read again each tick.)"""
        self.accepts = True
        connections = self.engine.connections

        def counted(delta: int) -> None:
            on_connection(delta)
            if delta > 0 and len(connections) >= self.cap:
                self._shed_at_cap()

        return counted

    def _shed_at_cap(self) -> None:
        if len(self.engine.connections) >= self.cap:
            self.make_room(1 + self.cap // 32)  # a few more: not every accept has to look

    def _tick(self, _now: float) -> None:
        """Connections that were too young to shed may be old enough now; a cap lowered by
        a drop (the app held more descriptors for a while) comes back as they are closed."""
        if self.cap < self.measured_cap:
            self.measure()
        if self.accepts:
            self._shed_at_cap()  # before the engine's housekeeping resumes accepting
        else:
            self.release()

    # -- a hand-off channel waiting for room ------------------------------------------------

    def hold(self, fileobj: Any, reader: Callable[[], object]) -> None:
        """Stop reading ``fileobj`` until the next tick."""
        self.engine.remove_reader(fileobj)
        self.held = (fileobj, reader)

    def release(self) -> None:
        """Read the held channel again (its reader holds it anew if there is still no room)."""
        if self.held is not None:
            fileobj, reader = self.held
            self.held = None
            self.engine.add_reader(fileobj, reader)

    def forget_held(self) -> None:
        """The worker stops reading its channel for good (it is stopping)."""
        self.held = None

    # -- descriptors the kernel dropped -----------------------------------------------------

    def dropped(self, count: int) -> None:
        """The kernel dropped ``count`` passed descriptors (something else used the reserve):
        say so, and take the cap from what is open now."""
        self._warn("dropped", count, "at the descriptor limit: the kernel dropped %d passed "
                   "connection(s) (cap %d within ulimit -n %d); the cap is measured again")
        self.measure()

    def _warn(self, kind: str, count: int, message: str) -> None:
        """One warning, then at most one every :data:`LOG_EVERY` seconds with the count since;
        ``message`` formats the count, the cap and the limit."""
        self._since_warned[kind] += count
        now = time.monotonic()
        if self._warned[kind] and now - self._warned[kind] < LOG_EVERY:
            return
        log.warning(message, self._since_warned[kind], self.cap, self.limit)
        self._warned[kind] = now
        self._since_warned[kind] = 0
