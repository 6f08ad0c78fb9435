"""The master's side of ``broadcast`` and ``gather``: one total order, fan-out, replies.

The master forwards payloads as the bytes the sender pickled; it never unpickles app data.
Each worker's outgoing buffer is bounded by :data:`MAX_WORKER_BACKLOG`: a worker that falls that
far behind is reported stuck and replaced, never silently skipped.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import ipc, runtime

log = logging.getLogger("flask_cluster.master")

MAX_WORKER_BACKLOG = 8 * 1024 * 1024
"""Bytes of messages the master holds for one worker before it counts as stuck."""


class Peer(Protocol):
    worker_id: int
    pid: int
    channel: ipc.MessageChannel


@dataclass
class _Gather:
    asker: Peer
    request_id: int
    deadline: float
    expected: dict[int, tuple[int, int]]  # pid -> (worker_id, pid)
    answers: dict[int, tuple[int, int, str, bytes | None]] = field(default_factory=dict)


class Broker:
    def __init__(self, send: Callable[[Peer, bytes], None]) -> None:
        self._send = send  # queues a frame for a worker (the master handles flushing and limits)
        self._seq = itertools.count(1)
        self._gather_ids = itertools.count(1)
        self._gathers: dict[int, _Gather] = {}

    def receive(self, sender: Peer, kind: str, args: tuple[Any, ...], live: Iterable[Peer]) -> None:
        """Act on a message from ``sender``; ``live`` are the workers that receive messages."""
        if kind == ipc.BROADCAST:
            topic, payload, include_self = args
            frame = ipc.encode(ipc.BROADCAST, next(self._seq), topic, payload)
            for peer in live:
                if include_self or peer is not sender:
                    self._send(peer, frame)
        elif kind == ipc.GATHER:
            request_id, topic, payload, timeout = args
            gather_id = next(self._gather_ids)
            peers = list(live)
            pending = _Gather(sender, request_id, time.monotonic() + timeout,
                              {peer.pid: (peer.worker_id, peer.pid) for peer in peers})
            self._gathers[gather_id] = pending
            frame = ipc.encode(ipc.GATHER, gather_id, topic, payload)
            for peer in peers:
                self._send(peer, frame)
            self._finish_if_complete(gather_id)
        elif kind == ipc.REPLY:
            gather_id, status, data = args
            waiting = self._gathers.get(gather_id)
            if waiting is not None and sender.pid in waiting.expected:
                waiting.answers[sender.pid] = (sender.worker_id, sender.pid, status, data)
                self._finish_if_complete(gather_id)
        else:
            log.warning("unknown message %r from worker %s", kind, sender.worker_id)

    def publish(self, topic: str, payload: bytes, live: Iterable[Peer]) -> int:
        """A broadcast from outside the workers (``cluster-ctl broadcast``); how many got it."""
        frame = ipc.encode(ipc.BROADCAST, next(self._seq), topic, payload)
        count = 0
        for peer in live:
            self._send(peer, frame)
            count += 1
        return count

    def worker_gone(self, peer: Peer) -> None:
        """``peer`` died: it will not answer, and nothing waits for its answer any more."""
        for gather_id, pending in list(self._gathers.items()):
            if pending.asker is peer:
                del self._gathers[gather_id]
            elif peer.pid in pending.expected and peer.pid not in pending.answers:
                pending.answers[peer.pid] = (peer.worker_id, peer.pid, runtime.MISSING, None)
                self._finish_if_complete(gather_id)

    def expire(self, now: float) -> None:
        for gather_id, pending in list(self._gathers.items()):
            if now >= pending.deadline:
                self._finish(gather_id)

    @property
    def pending(self) -> bool:
        """Gathers wait for answers."""
        return bool(self._gathers)

    def next_deadline(self) -> float | None:
        return min((pending.deadline for pending in self._gathers.values()), default=None)

    def _finish_if_complete(self, gather_id: int) -> None:
        pending = self._gathers[gather_id]
        if len(pending.answers) == len(pending.expected):
            self._finish(gather_id)

    def _finish(self, gather_id: int) -> None:
        pending = self._gathers.pop(gather_id)
        answers = [pending.answers.get(pid, (worker_id, pid, runtime.MISSING, None))
                   for pid, (worker_id, _) in pending.expected.items()]
        answers.sort(key=lambda answer: answer[0])
        self._send(pending.asker, ipc.encode(ipc.GATHERED, pending.request_id, answers))
