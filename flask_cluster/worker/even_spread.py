"""New connections a worker accepted itself (``shared``, ``reuseport``) go to a worker with fewer.

With ``shared`` the kernel decides which waiting worker accepts, and an idle worker that is
already on a CPU tends to win every time: 8 kept-alive clients opened one after another over
4 idle workers did not reach all 4 in 20 s, and their connections then stay where they landed.
So a worker that already has :data:`AHEAD` more connections open than another live worker
passes a connection it has just accepted, unread, to the master (over its hand-off channel, as
a kept-alive connection moves), which gives it to another worker. Round-robin spreads
connections in the master and never needs this. Costs a few reads of shared memory per
accepted connection; a hop through the master only while the spread is uneven.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from .. import ipc
from ..scoreboard import CONNECTIONS, Scoreboard
from .spread import AHEAD, others_beating


class EvenSpread:
    def __init__(self, channel: socket.socket, scoreboard: Scoreboard, slot: int) -> None:
        self.channel = channel  # our end of the hand-off channel
        self.scoreboard = scoreboard
        self.slot = slot

    def divert(self, sock: socket.socket, address: Any) -> bool:
        """True: ``sock`` (just accepted, nothing read) went to the master and is closed here."""
        board = self.scoreboard
        mine = board.get(self.slot, CONNECTIONS)
        if mine < AHEAD:
            return False
        now = int(time.monotonic() * 1000)
        fewest = min((board.get(slot, CONNECTIONS)
                      for slot in others_beating(board, self.slot, now)), default=mine)
        if mine - fewest < AHEAD:
            return False
        try:
            sent = ipc.send_connections(self.channel, [sock.fileno()],
                                        [ipc.encode_peer(address)])
        except ipc.ChannelClosed:
            return False  # the master is gone: serve it here
        if sent:
            sock.close()  # our copy; the master passes it on
        return sent
