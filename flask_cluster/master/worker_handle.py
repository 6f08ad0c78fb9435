"""The master's record of one worker process: its channels and hand-off counts (the I/O side;
its supervision state is in :mod:`.roster`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from .. import ipc
from ..scoreboard import (
    CONNECTIONS,
    FREE_SINCE_MS,
    IN_FLIGHT,
    RECEIVED,
    REQUEST_STARTED_US,
    Scoreboard,
)


class WorkerHandle:
    """The master's record of one worker process."""

    def __init__(self, worker_id: int, slot: int, pid: int, channel: ipc.MessageChannel,
                 handoff: socket.socket | None, scoreboard: Scoreboard) -> None:
        self.worker_id = worker_id
        self.slot = slot
        self.pid = pid
        self.channel = channel
        self.handoff = handoff
        # The master's copy of the worker's end of the hand-off channel: what the worker never
        # took can be taken back once it is dead (see Dispatcher.take_back).
        self.reclaim: socket.socket | None = None
        # Its words, indexed directly: the dispatch reads these several times for every
        # connection it places (a tenth of the master's time per connection through
        # Scoreboard.get).
        self.words = scoreboard.words
        base = scoreboard.base(slot)
        self._received = base + RECEIVED
        self._in_flight = base + IN_FLIGHT
        self._started_us = base + REQUEST_STARTED_US
        self._connections = base + CONNECTIONS
        self._free_since_ms = base + FREE_SINCE_MS
        self.sent = 0  # connections passed to it
        self.wants_write = False  # registered for EVENT_WRITE: messages wait for the worker
        self.behind_since: float | None = None  # since when its message backlog is too large
        self.on_event: Callable[[Any, int], None] = lambda _sock, _mask: None

    @property
    def untaken(self) -> int:
        """Connections passed to it that it has not taken yet."""
        untaken = self.sent - self.words[self._received]
        return untaken if untaken > 0 else 0

    @property
    def in_flight(self) -> int:
        """Requests in progress, plus connections passed to it that it has not taken yet."""
        return self.words[self._in_flight] + self.untaken

    @property
    def serving_for(self) -> float:
        """Seconds its current request has run (``--threads 1``); 0.0 while it serves none."""
        if not self.words[self._in_flight]:
            return 0.0
        return max(0.0, time.monotonic() - self.words[self._started_us] / 1e6)

    @property
    def idle_for(self) -> float:
        """Seconds since its last request ended, while it serves none and has taken all it
        was passed (``--threads 1``); 0.0 otherwise."""
        if self.in_flight:
            return 0.0
        return max(0.0, time.monotonic() - self.words[self._free_since_ms] / 1000)

    @property
    def connections(self) -> int:
        return self.words[self._connections]

    def handed(self, count: int) -> None:
        self.sent += count

    def __repr__(self) -> str:
        return f"worker {self.worker_id} (pid {self.pid})"

