"""The master's message hub: broadcasts in one total order, fanned out; gathers and their replies.

The hub forwards payloads as the bytes the sender pickled; it never unpickles app data. Where a
broadcast gets its place in the order is the :class:`Relay`'s business: on one host the
:class:`LocalRelay` numbers it and hands it straight back; a relay through a shared log (Redis
Streams) plugs in here, and neither the extension nor the workers notice. A relay that also
reaches other hosts' workers for gathers (a :class:`HostRelay`) tells the hub whom to wait for
there, carries the question out and the answers back. Each worker's outgoing
buffer is bounded by :data:`MAX_WORKER_BACKLOG`: a worker that falls that far behind is reported
stuck and replaced, never silently skipped.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import wire

log = logging.getLogger("flask_cluster.master")

MAX_WORKER_BACKLOG = 8 * 1024 * 1024
"""Bytes of messages the master holds for one worker before it counts as stuck."""
ANSWER_MARGIN = 0.2
"""Seconds before the asker's deadline another host stops waiting, so its answers travel back."""


class Peer(Protocol):
    worker_id: int
    pid: int


Deliver = Callable[[int, str, bytes, int | None], None]
"""``deliver(seq, topic, payload, skip)``: fan a broadcast out to this host's workers, except the
one whose pid is ``skip`` (its sender asked ``include_self=False``)."""


class Relay(Protocol):
    """Gives every broadcast its place in the one total order.

    The hub calls :meth:`publish`; the relay calls the ``deliver`` it was made with exactly once
    per broadcast, in the order, on the master's loop thread, with ascending sequence numbers
    (the workers drop a number they have seen). It may deliver later than :meth:`publish`
    returns, after a round trip through a shared log, and resume from the last one delivered.
    """

    def publish(self, topic: str, payload: bytes, skip: int | None) -> None: ...


class LocalRelay:
    """One host: the pipes are the whole cluster, so to publish is to deliver."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._seq = itertools.count(1)

    def publish(self, topic: str, payload: bytes, skip: int | None) -> None:
        self._deliver(next(self._seq), topic, payload, skip)


class HostRelay(Relay, Protocol):
    """A relay that also carries gathers to the workers of other hosts."""

    def bind(self, asked: Asked, answered: Answered) -> None:
        """Call ``asked`` for a question from another host, ``answered`` for its answers."""

    def hosts(self) -> dict[str, list[int]]:
        """The other live hosts and their worker ids: whom a gather waits for there."""

    def ask(self, gather_id: int, topic: str, payload: bytes, deadline: float) -> None:
        """Put the question to the other hosts; ``deadline`` in ``time.time()`` seconds."""

    def answer(self, host: str, gather_id: int, answers: list[wire.WireAnswer]) -> None:
        """Send this host's answers to ``host``'s gather ``gather_id``."""


Asked = Callable[[str, int, str, bytes, float], None]
"""``asked(host, gather_id, topic, payload, deadline)``: another host's gather question."""
Answered = Callable[[str, int, list[wire.WireAnswer]], None]
"""``answered(host, gather_id, answers)``: another host's answers to one of our gathers."""


@dataclass(frozen=True)
class _RemoteAsker:
    host: str


# A worker of this host by ("", pid); one of another host by (host, worker_id): their pids are
# not known beforehand, only the worker ids each host announces.
_Key = tuple[str, int]


@dataclass
class _Gather:
    asker: Peer | _RemoteAsker
    request_id: int
    deadline: float
    expected: dict[_Key, int]  # -> worker_id
    answers: dict[_Key, wire.WireAnswer] = field(default_factory=dict)


class Hub:
    def __init__(self, send: Callable[[Peer, bytes], None], live: Callable[[], Sequence[Peer]],
                 relay: Callable[[Deliver], Relay] = LocalRelay) -> None:
        """``send`` queues a frame for a worker (the master flushes and bounds it); ``live``
        are the workers that receive messages now."""
        self._send = send
        self._live = live
        self._relay = relay(self._deliver)
        self._hosts: HostRelay | None = None
        if hasattr(self._relay, "bind"):
            hosts: HostRelay = self._relay  # type: ignore[assignment]
            hosts.bind(self._asked, self._answered)
            self._hosts = hosts
        self._gather_ids = itertools.count(1)
        self._gathers: dict[int, _Gather] = {}
        self.counts: Counter[str] = Counter()  # broadcasts, gathers, gather_timeouts (--metrics)
        self._handlers: dict[type[wire.Message], Callable[[Any, Any], None]] = {
            wire.Broadcast: self._broadcast,
            wire.Gather: self._gather,
            wire.Reply: self._reply,
        }

    def receive(self, sender: Peer, message: wire.Message) -> None:
        """Act on a message from the worker ``sender``."""
        handler = self._handlers.get(type(message))
        if handler is None:
            log.warning("unexpected %s from worker %s", type(message).__name__, sender.worker_id)
        else:
            handler(sender, message)

    def publish(self, topic: str, payload: bytes) -> int:
        """A broadcast from outside the workers (``cluster-ctl broadcast``); how many get it."""
        receivers = len(self._live())
        self.counts["broadcasts"] += 1
        self._relay.publish(topic, payload, None)
        return receivers

    def worker_gone(self, peer: Peer) -> None:
        """``peer`` died: it will not answer, and nothing waits for its answer any more."""
        for gather_id, pending in list(self._gathers.items()):
            if pending.asker is peer:
                del self._gathers[gather_id]
            elif ("", peer.pid) in pending.expected and ("", peer.pid) not in pending.answers:
                pending.answers["", peer.pid] = (peer.worker_id, peer.pid, wire.MISSING, None, "")
                self._finish_if_complete(gather_id)

    def expire(self, now: float) -> None:
        for gather_id, pending in list(self._gathers.items()):
            if now >= pending.deadline:
                self.counts["gather_timeouts"] += 1
                self._finish(gather_id)

    @property
    def pending(self) -> bool:
        """Gathers wait for answers."""
        return bool(self._gathers)

    def next_deadline(self) -> float | None:
        return min((pending.deadline for pending in self._gathers.values()), default=None)

    # -- handlers -----------------------------------------------------------------------------

    def _broadcast(self, sender: Peer, message: wire.Broadcast) -> None:
        self.counts["broadcasts"] += 1
        self._relay.publish(message.topic, message.payload,
                            None if message.include_self else sender.pid)

    def _deliver(self, seq: int, topic: str, payload: bytes, skip: int | None) -> None:
        frame = wire.encode(wire.Deliver(seq, topic, payload))
        for peer in self._live():
            if peer.pid != skip:
                self._send(peer, frame)

    def _gather(self, sender: Peer, message: wire.Gather) -> None:
        gather_id = self._ask_here(sender, message.request_id, message.topic, message.payload,
                                   message.timeout)
        hosts = self._hosts.hosts() if self._hosts is not None else {}
        if hosts:
            assert self._hosts is not None
            expected = self._gathers[gather_id].expected
            for host, worker_ids in hosts.items():
                expected.update(((host, worker_id), worker_id) for worker_id in worker_ids)
            self._hosts.ask(gather_id, message.topic, message.payload,
                            time.time() + message.timeout)
        self._finish_if_complete(gather_id)

    def _asked(self, host: str, gather_id: int, topic: str, payload: bytes,
               deadline: float) -> None:
        timeout = deadline - time.time() - ANSWER_MARGIN
        if timeout > 0:  # else the asker has given up already: its answer would go nowhere
            self._finish_if_complete(
                self._ask_here(_RemoteAsker(host), gather_id, topic, payload, timeout))

    def _ask_here(self, asker: Peer | _RemoteAsker, request_id: int, topic: str, payload: bytes,
                  timeout: float) -> int:
        """Put the question to this host's workers; the new gather's id."""
        gather_id = next(self._gather_ids)
        self.counts["gathers"] += 1
        peers = self._live()
        self._gathers[gather_id] = _Gather(asker, request_id, time.monotonic() + timeout,
                                           {("", peer.pid): peer.worker_id for peer in peers})
        frame = wire.encode(wire.Ask(gather_id, topic, payload))
        for peer in peers:
            self._send(peer, frame)
        return gather_id

    def _reply(self, sender: Peer, message: wire.Reply) -> None:
        waiting = self._gathers.get(message.gather_id)
        if waiting is not None and ("", sender.pid) in waiting.expected:
            waiting.answers["", sender.pid] = (sender.worker_id, sender.pid, message.status,
                                               message.payload, "")
            self._finish_if_complete(message.gather_id)

    def _answered(self, host: str, gather_id: int, answers: list[wire.WireAnswer]) -> None:
        waiting = self._gathers.get(gather_id)
        if waiting is None or isinstance(waiting.asker, _RemoteAsker):
            return  # too late, or not ours
        for worker_id, pid, status, payload, _host in answers:
            if (host, worker_id) in waiting.expected:
                waiting.answers[host, worker_id] = (worker_id, pid, status, payload, host)
        self._finish_if_complete(gather_id)

    def _finish_if_complete(self, gather_id: int) -> None:
        pending = self._gathers[gather_id]
        if len(pending.answers) == len(pending.expected):
            self._finish(gather_id)

    def _finish(self, gather_id: int) -> None:
        pending = self._gathers.pop(gather_id)
        answers = [pending.answers.get(key, _missing(key, worker_id))
                   for key, worker_id in pending.expected.items()]
        answers.sort(key=lambda answer: (answer[4], answer[0]))
        if isinstance(pending.asker, _RemoteAsker):
            if self._hosts is not None:
                self._hosts.answer(pending.asker.host, pending.request_id, answers)
        else:
            self._send(pending.asker, wire.encode(wire.Gathered(pending.request_id, answers)))


def _missing(key: _Key, worker_id: int) -> wire.WireAnswer:
    host, number = key
    return (worker_id, 0 if host else number, wire.MISSING, None, host)
