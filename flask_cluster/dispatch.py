"""Which worker gets the next connection, and the hand-off itself.

The choice is pure (no I/O) so it can be tested without processes; :func:`hand_off` does the
I/O and moves on to the next candidate when a worker's queue is full or the worker is gone.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from . import ipc

log = logging.getLogger("flask_cluster.master")


class Target(Protocol):
    """A worker as the dispatcher sees it."""

    handoff: socket.socket | None
    worker_id: int

    @property
    def in_flight(self) -> int: ...


class RoundRobin:
    """The next ready worker in turn, as Node's cluster module does."""

    def __init__(self) -> None:
        self._next = 0

    def order(self, ready: Sequence[Target]) -> list[Target]:
        """Every ready worker, the one whose turn it is first."""
        if not ready:
            return []
        start = self._next % len(ready)
        self._next = start + 1
        return [*ready[start:], *ready[:start]]


class LeastBusy:
    """The ready worker with the fewest requests in flight; ties go round-robin."""

    def __init__(self) -> None:
        self._turns = RoundRobin()

    def order(self, ready: Sequence[Target]) -> list[Target]:
        rotated = self._turns.order(ready)
        return sorted(rotated, key=lambda target: target.in_flight)  # stable: keeps the turn


def chooser(balance: str) -> RoundRobin | LeastBusy:
    return LeastBusy() if balance == "least-busy" else RoundRobin()


def hand_off(conn: socket.socket, candidates: list[Target],
             on_gone: Callable[[Target], None]) -> bool:
    """Pass ``conn`` to the first candidate that takes it; False if none could."""
    for target in candidates:
        assert target.handoff is not None
        try:
            if ipc.send_connection(target.handoff, conn.fileno()):
                return True
        except ipc.ChannelClosed:
            on_gone(target)  # died since we last looked: never hand it another connection
    return False
