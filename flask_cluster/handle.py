"""The master's record of one worker process, and how a dead one's exit reads in the log."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from . import ipc
from .scoreboard import CONNECTIONS, IN_FLIGHT, RECEIVED, Scoreboard


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
        self.scoreboard = scoreboard
        # booting -> ready -> retiring (told to finish and exit); "gone" once it is known to be
        # dead or stuck but not yet reaped. Only "ready" workers get connections and messages.
        self.state = "booting"
        self.replaced = False  # a successor was started already: do not respawn on exit
        self.started = time.monotonic()
        self.kill_at: float | None = None  # SIGKILL if still alive then
        self.boot_error: str | None = None
        self.restarts = 0
        self.sent = 0  # connections passed to it
        self.over_memory = 0  # consecutive checks above --max-memory
        self.wants_write = False  # registered for EVENT_WRITE: messages wait for the worker
        self.behind_since: float | None = None  # since when its message backlog is too large
        self.on_event: Callable[[Any, int], None] = lambda _sock, _mask: None
        self.renewing = False  # a successor is on its way

    @property
    def untaken(self) -> int:
        """Connections passed to it that it has not taken yet."""
        return max(0, self.sent - self.scoreboard.get(self.slot, RECEIVED))

    @property
    def in_flight(self) -> int:
        """Requests in progress, plus connections passed to it that it has not taken yet."""
        return self.scoreboard.get(self.slot, IN_FLIGHT) + self.untaken

    @property
    def connections(self) -> int:
        return self.scoreboard.get(self.slot, CONNECTIONS)

    def handed(self, count: int) -> None:
        self.sent += count

    def __repr__(self) -> str:
        return f"worker {self.worker_id} (pid {self.pid})"


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exit code {os.WEXITSTATUS(status)}"
