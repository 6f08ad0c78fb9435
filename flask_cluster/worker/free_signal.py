"""Telling the master "free" the moment it is true, while it holds connections for a worker.

With ``--threads 1`` the master passes a connection only to a worker with room (nothing in
flight, or a young request with room behind it: ``master/choice.py``); when none has, it holds
the connection and writes how many it holds in the scoreboard's HOLDING word. While that word
is not 0, a worker whose last request in flight just ended says
:class:`~flask_cluster.wire.Free` on its message channel, so the held connection goes out at
once instead of at the master's next retry. While the master holds nothing this costs one read
of shared memory per request.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import ipc, wire
from ..scoreboard import HOLDING

FREE = wire.encode(wire.Free())


class FreeSignal:
    def __init__(self, words: memoryview, in_flight_index: int,
                 send: Callable[[bytes], None]) -> None:
        self.words = words
        self.in_flight_index = in_flight_index
        self.send = send

    def request_ended(self) -> None:
        """After the in-flight count went down (on the loop thread)."""
        words = self.words
        if words[HOLDING] and not words[self.in_flight_index]:
            try:
                self.send(FREE)
            except ipc.ChannelClosed:
                pass  # the master is gone: the heartbeat check stops us
