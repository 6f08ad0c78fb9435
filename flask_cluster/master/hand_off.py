"""Passing accepted connections to a worker's hand-off channel, and reading back what comes
back on it: the dispatcher's I/O (:mod:`.dispatch`)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import NamedTuple

from .. import ipc
from .choice import Target

HAND_BACK_BATCH = 64  # packets read per wake-up from a worker handing connections back


class Accepted(NamedTuple):
    """A connection the master accepted (its descriptor: the master only passes it on), and
    its peer as ``accept()`` reported it."""

    fd: int
    peer: bytes


def drain(channel: socket.socket) -> list[tuple[int, bytes]]:
    """Every connection readable on ``channel`` now, with its peer."""
    passed: list[tuple[int, bytes]] = []
    try:
        while batch := ipc.receive_passed(channel, HAND_BACK_BATCH):
            passed += batch
    except ipc.ChannelClosed:
        pass  # no end of stream while the master holds both ends: an error; nothing more
    return passed


def hand_off(batch: list[Accepted], candidates: list[Target],
             on_gone: Callable[[Target], None]) -> Target | None:
    """Pass ``batch`` in one packet to the first candidate that takes it: that one, or None if
    none could."""
    fds = [item.fd for item in batch]
    peers = [item.peer for item in batch]
    for target in candidates:
        assert target.handoff is not None
        try:
            if ipc.send_connections(target.handoff, fds, peers):
                target.handed(len(batch))
                return target
        except ipc.ChannelClosed:
            on_gone(target)  # died since we last looked: never hand it another connection
    return None
