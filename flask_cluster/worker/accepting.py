"""Where a worker accepts connections itself, each counted on the scoreboard for
``/metrics``: on the listener it shares (``shared``), on its own (``reuseport``), or on the
master's while every worker is busy (``round-robin`` and ``least-busy`` with ``--threads 1``).

The master passes each connection to a worker with room (master/choice.py). When none has, it
stops accepting and sets the scoreboard's WORKERS_ACCEPT word (master/dispatch.py); while the
word is set, each worker accepts on the listener itself, one connection per wake-up of its
loop. With the app on the loop, the loop runs only while the worker serves no request, so a
connection goes to a worker the moment it is free, as with gunicorn's sync workers, and with
no round trip through the master: holding each connection cost the master an accept, a
``Free`` message and a hand-off, and saturated ``Connection: close`` ran at 0.75-0.88x of
``shared`` (benchmarks/RESULTS.md). The master takes the listener back once a worker has idled
(the backlog is empty then); a worker that has not looked since accepts at most what reaches
it before its next look, while it is free to serve it.

The word is read when the worker's last request in flight ends, about to wait for work, and
on each housekeeping tick: one read of shared memory per request.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from ..contract import WorkerSockets
from ..listeners import reuseport_listener
from ..request_counters import ACCEPTED
from ..scoreboard import WORKERS_ACCEPT, Scoreboard
from .engine import Engine


def accept_own(engine: Engine, sockets: WorkerSockets, board: Scoreboard,
               slot: int) -> BacklogShare | None:
    """Accept where ``sockets`` say; the :class:`BacklogShare` that reads the master's word,
    if the master may leave its listener to us."""
    words = board.words
    accepted = board.counters_base(slot) + ACCEPTED

    def count() -> None:
        words[accepted] += 1

    if sockets.listener is not None:
        engine.accept_from(sockets.listener, shared=True, on_accept=count)
    elif sockets.reuseport is not None:
        sockets.listener = reuseport_listener(*sockets.reuseport)
        engine.accept_from(sockets.listener, on_accept=count)
    if sockets.backlog is not None:
        return BacklogShare(engine, sockets.backlog, words, count)
    return None


class BacklogShare:
    """Accepts on the master's listener while the master leaves it to the workers."""

    def __init__(self, engine: Engine, listener: socket.socket, words: memoryview,
                 on_accept: Callable[[], None]) -> None:
        self.engine = engine
        self.listener = listener
        self.words = words
        self.on_accept = on_accept
        self.accepting = False
        engine.tick_callbacks.append(self.look)
        self.look()

    def look(self, _now: float = 0.0) -> None:
        """Accept on the listener while the master leaves it to the workers; not once it
        takes it back, or once we are asked to stop."""
        engine = self.engine
        wanted = self.words[WORKERS_ACCEPT] != 0 and not (engine.stopping or engine.stop_asked_at)
        if wanted == self.accepting:
            return
        self.accepting = wanted
        if wanted:
            engine.accept_from(self.listener, shared=True, on_accept=self.on_accept)
        else:
            engine.remove_listener(self.listener)
