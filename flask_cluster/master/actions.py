"""What the roster (:mod:`.roster`) asks the master to do: the master performs each in order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spawn:
    """Fork a worker into ``worker_id``; tell the roster its pid with :meth:`Roster.add`."""

    worker_id: int


@dataclass(frozen=True)
class Signal:
    """Send ``sig`` to ``pid``. ``hand_back``: a worker retired on purpose (a reload, a renewal,
    a scale down), asked first to hand its kept-alive connections back instead of closing them."""

    pid: int
    sig: int
    hand_back: bool = False


@dataclass(frozen=True)
class Kill:
    pid: int


@dataclass(frozen=True)
class Abandon:
    """Expect nothing more from ``pid`` (pending gathers count it as gone)."""

    pid: int


@dataclass(frozen=True)
class StopAccepting:
    """Stop taking new connections: the cluster is stopping."""


@dataclass(frozen=True)
class Exit:
    """The master gives up: exit with ``code`` once the workers are gone."""

    code: int
    reason: str


@dataclass(frozen=True)
class Log:
    level: int
    message: str


Action = Spawn | Signal | Kill | Abandon | StopAccepting | Exit | Log
