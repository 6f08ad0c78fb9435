"""Which worker gets the next connection: the pure choice, no I/O, so it is tested without
processes (:mod:`.dispatch` does the hand-off).

Round-robin as in Node.js's cluster module: the master owns the listener, so every worker gets
its turn whatever the kernel's wake-up order (shared accept piles bursts onto one worker).

With ``--threads 1`` a worker serving a request cannot start another, so a connection passed to
it waits for that request to end, however long it runs, while another worker may be idle. The
:class:`Choice` therefore offers a connection only to a worker with room: serving no request, or
serving one younger than :data:`YOUNG` with fewer than ``--queue-depth`` connections waiting
behind it. When no worker has room the master holds the connection (and leaves the rest in the
kernel's backlog) until a worker says it is free (``wire.Free``), as gunicorn's sync workers
accept only when free.

Why young requests only: a connection queued behind a request is there when the request ends,
with no round trip through the master (holding every connection cost saturated ``Connection:
close`` throughput 6-17 %); a request that has run for a millisecond is one that may run for
seconds, and nothing more is queued behind it (benchmarks/RESULTS.md, docs/http.rst).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol


class Target(Protocol):
    """A worker as the dispatcher sees it."""

    handoff: socket.socket | None
    reclaim: socket.socket | None  # the master's copy of the worker's end of ``handoff``
    worker_id: int

    @property
    def in_flight(self) -> int:
        """Requests it is serving plus connections passed to it and not yet taken."""
        ...

    @property
    def connections(self) -> int:
        """Connections it has open."""
        ...

    @property
    def untaken(self) -> int:
        """Connections passed to it that it has not taken off its hand-off channel yet."""
        ...

    @property
    def serving_for(self) -> float:
        """Seconds its current request has run (0.0 while it serves none)."""
        ...

    @property
    def idle_for(self) -> float:
        """Seconds it has served no request and had nothing passed to it untaken (0.0 while
        it has)."""
        ...

    def handed(self, count: int) -> None:
        """``count`` connections were just passed to it."""
        ...


NONE_ASSIGNED: Mapping[int, int] = MappingProxyType({})
YOUNG = 0.001  # seconds: a request this young is likely a quick one; an older one may be slow


def behind(target: Target, serving_blocks: bool) -> bool:
    """``target`` cannot take a connection now: it has not taken the last ones it was passed,
    or (``serving_blocks``: with ``--threads 1`` its loop runs the app) it is serving a
    request. A worker that hangs in a view is behind from its first second, not only once
    its heartbeat goes stale."""
    return bool(target.untaken or (serving_blocks and target.in_flight))


class RoundRobin:
    """The next ready worker in turn, as Node's cluster module does.

    Like Node's, which passes a worker its next connection only once the worker has taken the
    last one, a worker that is :func:`behind` (has not taken what it was passed, or with
    ``--threads 1`` is serving a request) is passed over for the next one in turn that is not:
    otherwise the connection would wait behind a busy worker while another sits idle. When
    every worker is behind, plain turns (with ``--threads 1`` the :class:`Choice` offers only
    workers with room, so that happens only within ``--queue-depth``). The turn then continues
    after the worker chosen, so turns stay even.
    """

    def __init__(self, serving_blocks: bool = False) -> None:
        self._next = 0
        self.serving_blocks = serving_blocks

    def order(self, ready: Sequence[Target], assigned: Mapping[int, int] = NONE_ASSIGNED
              ) -> list[Target]:
        """Every ready worker, the one chosen first, then the rest in turn. ``assigned`` (what
        this batch already gave each worker) is not counted: a worker that has taken all it
        was passed gets the next connection of the batch too, as it is the one with room;
        spreading the batch to a busy worker measured 17 % slower with Connection: close."""
        if not ready:
            return []
        start = self._next % len(ready)
        in_turn = [*ready[start:], *ready[:start]]
        chosen = next((index for index, target in enumerate(in_turn)
                       if not behind(target, self.serving_blocks)), 0)
        self._next = start + chosen + 1
        return [in_turn[chosen], *in_turn[:chosen], *in_turn[chosen + 1:]]


class LeastBusy:
    """The ready worker with the fewest requests in flight; ties go round-robin among the tied
    (the next worker id after the last one chosen), so each gets its share."""

    def __init__(self) -> None:
        self._last = -1  # worker id of the last first choice

    def order(self, ready: Sequence[Target], assigned: Mapping[int, int] = NONE_ASSIGNED
              ) -> list[Target]:
        """Every ready worker, least busy first. ``assigned``: connections of the current
        batch already given to each worker id, counted as in flight and open."""
        if not ready:
            return []
        span = max(target.worker_id for target in ready) + 1
        last = self._last

        # Requests in flight first, then open connections: a burst of new keep-alive
        # connections spreads out even before their first requests arrive.
        def load(target: Target) -> tuple[int, int, int]:
            extra = assigned.get(target.worker_id, 0)
            return (target.in_flight + extra, target.connections + extra,
                    (target.worker_id - last - 1) % span)

        ranked = sorted(ready, key=load)
        self._last = ranked[0].worker_id
        return ranked


class Choice:
    """The workers that may take the next connection now, in the order to try them.

    ``queue_depth`` applies with ``serving_blocks`` only (``--threads 1``): a worker serving a
    request younger than :data:`YOUNG` may be given a connection while at most
    ``queue_depth`` requests and connections are in flight on it, counting what this batch
    already gave it. None: any ready worker, busy or not (threaded workers serve several at
    once).

    A worker serving no request always has room: connections passed to it (in this batch, or
    earlier and not yet taken) count only in the turns, so a burst spreads over the free
    workers. A new connection is not a request yet; counting it against a free worker held all
    but one connection per free worker, released one per pass of the master's loop, so 500
    slow-header clients sat here past ``--header-timeout`` instead of being answered 408.
    """

    def __init__(self, balance: str, serving_blocks: bool = False,
                 queue_depth: int | None = None) -> None:
        self.turns = LeastBusy() if balance == "least-busy" else RoundRobin(serving_blocks)
        self.queue_depth = queue_depth if serving_blocks else None

    def order(self, ready: Sequence[Target], assigned: Mapping[int, int] = NONE_ASSIGNED, *,
              holding: bool = True) -> list[Target]:
        """Every worker of ``ready`` with room, the one chosen first; empty: hold the
        connection. ``holding`` False (the cluster stops): every ready worker, room or not."""
        depth = self.queue_depth
        if depth is not None and holding:
            ready = [target for target in ready
                     if has_room(target, assigned.get(target.worker_id, 0), depth)]
        return self.turns.order(ready, assigned)


def has_room(target: Target, assigned: int, depth: int) -> bool:
    """``target`` (given ``assigned`` more in this batch) may take a connection: it serves no
    request, or a young one with at most ``depth`` in flight. Each count is read once: this
    runs for every worker on every connection the master places."""
    in_flight = target.in_flight
    if in_flight == target.untaken:  # serving no request
        return True
    return in_flight + assigned <= depth and target.serving_for < YOUNG
