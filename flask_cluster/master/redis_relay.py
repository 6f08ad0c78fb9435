"""Broadcasts and gathers across machines: every master appends to one Redis Stream and delivers
what it reads.

The stream is the one total order: a master does not deliver its own workers' broadcasts when
they arrive but when it reads them back, so every host fans out the same entries in the same
order. The Redis I/O happens in a process of its own, the broker link (:mod:`.broker_link`);
the master trades non-blocking frames with it on its own loop, and starts another when it dies.

Nothing is lost or doubled: the master numbers each entry it sends (per host, counting up) and
keeps it until the link confirms Redis took it, at most ``--broker-buffer`` of them; past that
the workers' ``broadcast`` raises (the scoreboard tells them). A new link gets every unconfirmed
entry again, so an entry can appear twice in the stream; every reader drops a number it has seen
(:class:`Order`), so all hosts skip the same copies. A gap in a host's numbers means the stream
was trimmed (``MAXLEN ~``) past entries this master never read: it logs how many it missed.

Gathers: each master announces its workers under a key with a short TTL (the link refreshes
it); a gather puts its question in the stream, and each other host answers into the asker's own
inbox stream, read by the asker's link only.
"""

from __future__ import annotations

import logging
import marshal
import os
import selectors
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import ipc, wire
from ..config import Config
from . import entries
from .backoff import Backoff
from .broker_link import CHANNEL_FD, redact, stream_key
from .entries import Fields
from .hub import Answered, Asked, Deliver

log = logging.getLogger("flask_cluster.master")

STEADY = 10.0  # seconds a link must live before its restart delay starts over
RESTART_CAP = 5.0  # seconds, at most, between a link's death and the next one's start


class Order:
    """Which stream entries to deliver: each host's numbers once, counting the ones trimmed away."""

    def __init__(self) -> None:
        self.last: dict[bytes, int] = {}  # host -> its highest number delivered
        self.missed = 0

    def accept(self, host: bytes, number: int) -> bool:
        last = self.last.get(host)
        if last is not None:
            if number <= last:
                return False  # a copy from a write sent again after its reply was lost
            if number > last + 1:
                self.missed += number - last - 1
                log.error("missed %d broadcasts from host %s: the stream was trimmed (MAXLEN "
                          "--broker-stream-len) before this master read them",
                          number - last - 1, host.decode())
        self.last[host] = number
        return True


class Unconfirmed:
    """Entries sent to the link that Redis has not taken yet, numbered, in order."""

    def __init__(self, limit: int, on_full: Callable[[bool], None]) -> None:
        self.limit = limit
        self.number = 0
        self._entries: deque[tuple[int, Fields]] = deque()
        self._on_full = on_full
        self.full = False

    def add(self, entry: Callable[[int], Fields]) -> tuple[int, Fields]:
        """Number the next entry, ``entry(number)``, and keep it until confirmed."""
        self.number += 1
        fields = entry(self.number)
        self._entries.append((self.number, fields))
        self._check()
        return self.number, fields

    def confirmed(self, number: int) -> None:
        while self._entries and self._entries[0][0] <= number:
            self._entries.popleft()
        self._check()

    def _check(self) -> None:
        # Workers read the flag before they send: those already sending when it goes up are
        # kept, so the bound is exceeded by at most what was on the way, and nothing is lost.
        full = len(self._entries) >= self.limit
        if full != self.full:
            self.full = full
            self._on_full(full)
            if full:
                log.error("broker unreachable and %d broadcasts waiting (--broker-buffer): "
                          "broadcast() raises BrokerBufferFull until it is back", self.limit)

    def __iter__(self) -> Any:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


class RedisRelay:
    """A :class:`~flask_cluster.master.hub.HostRelay` through a Redis Stream shared by every host."""

    def __init__(self, deliver: Deliver, *, url: str, cluster_name: str, buffer: int,
                 stream_len: int, selector: selectors.BaseSelector, log_level: str = "info",
                 log_format: str = "text", on_full: Callable[[bool], None] = lambda _full: None,
                 workers: Callable[[], list[int]] = list) -> None:
        self._deliver = deliver
        self._url = url
        self.stream = stream_key(cluster_name)
        self.host = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._host = self.host.encode()
        self._settings = {"url": url, "cluster_name": cluster_name, "host": self.host,
                          "stream_len": stream_len, "log_level": log_level,
                          "log_format": log_format}
        self.order = Order()
        self.malformed = 0  # entries in our keys that no master wrote
        self.unconfirmed = Unconfirmed(buffer, on_full)
        self._workers = workers
        self._announced: list[int] | None = None
        self._seq = 0
        # Where a link starts reading: first, where this master started (stream ids are the
        # Redis server's clock in ms), so nothing sent while the first link connects is missed.
        self.delivered_id = f"{int(time.time() * 1000)}-0"
        self._link_status: dict[str, Any] = {"connected": False, "hosts": {}, "newest_id": ""}
        self._asked: Asked = lambda *_args: None
        self._answered: Answered = lambda *_args: None
        self._selector = selector
        self._backoff = Backoff(cap=RESTART_CAP, stable_after=STEADY)
        self.restarts = 0
        self._restart_at: float | None = None
        self._started = 0.0
        self.pid = 0
        self.channel: ipc.MessageChannel | None = None
        self._writing = False  # waiting for the socket to take queued frames
        self._start_link()

    # -- the link process ---------------------------------------------------------------------

    def _start_link(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.pid = os.posix_spawn(
                sys.executable, [sys.executable, "-m", "flask_cluster.master.broker_link"],
                os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), CHANNEL_FD)])
        finally:
            theirs.close()
        ours.setblocking(False)
        self.channel = ipc.MessageChannel(ours)
        self._started = time.monotonic()
        self._announced = None
        self.channel.queue(marshal.dumps({**self._settings, "last_id": self.delivered_id}))
        for number, fields in self.unconfirmed:  # Redis may have some: Order drops the copies
            self.channel.queue(marshal.dumps(("p", number, fields)))
        self._selector.register(ours, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_ready)
        self._writing = True

    def _link_gone(self) -> None:
        assert self.channel is not None
        self._selector.unregister(self.channel.sock)
        self.channel.close()
        self.channel = None
        delay = self._backoff.delay(0, time.monotonic() - self._started)
        log.error("the broker link (pid %d) is gone: starting another in %.1fs; %d broadcasts "
                  "wait for it", self.pid, delay, len(self.unconfirmed))
        self._restart_at = time.monotonic() + delay

    def tick(self, now: float) -> None:
        """From the master's housekeeping: restart a dead link when due; announce our workers."""
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self._start_link()
        workers = self._workers()
        if self.channel is not None and workers != self._announced:
            self._announced = workers
            self._send(("w", entries.announcement(workers, os.getpid())))

    def _send(self, message: tuple[Any, ...]) -> None:
        if self.channel is None:
            return  # the link restarts soon and gets what matters again
        self.channel.queue(marshal.dumps(message))
        if not self._writing:  # sent when the loop comes round: many broadcasts, one send
            self._writing = True
            self._selector.modify(self.channel.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                  self._on_ready)

    def _flush(self) -> None:
        assert self.channel is not None
        try:
            done = self.channel.flush()
        except ipc.ChannelClosed:
            return  # the read side notices and restarts the link
        if done:
            self._writing = False
            self._selector.modify(self.channel.sock, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self, _sock: Any, mask: int) -> None:
        assert self.channel is not None
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if not mask & selectors.EVENT_READ:
            return
        try:
            frames = self.channel.receive()
        except ipc.ChannelClosed:
            self._link_gone()
            return
        for frame in frames:
            kind, body = marshal.loads(frame)
            if kind == "e":
                self._deliver_entries(body)
            elif kind == "i":
                self._answers(body)
            elif kind == "c":
                self.unconfirmed.confirmed(body)
            else:
                self._link_status = body

    # -- the hub's side -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, skip: int | None) -> None:
        self._append(lambda number: entries.broadcast_fields(self._host, number, topic, payload,
                                                             skip))

    def bind(self, asked: Asked, answered: Answered) -> None:
        self._asked, self._answered = asked, answered

    def hosts(self) -> dict[str, list[int]]:
        hosts = {}
        for host, announcement in self._link_status["hosts"].items():
            workers = entries.parse_workers(announcement)
            if workers is None:
                self._malformed("host announcement")
            elif host != self.host:
                hosts[host] = workers
        return hosts

    def ask(self, gather_id: int, topic: str, payload: bytes, deadline: float) -> None:
        self._append(lambda number: entries.question_fields(self._host, number, gather_id, topic,
                                                            payload, deadline))

    def answer(self, host: str, gather_id: int, answers: list[wire.WireAnswer]) -> None:
        self._send(("r", host, {b"h": self._host, b"g": b"%d" % gather_id,
                                b"a": entries.pack_answers(answers)}))

    def _append(self, entry: Callable[[int], Fields]) -> None:
        number, fields = self.unconfirmed.add(entry)
        self._send(("p", number, fields))

    def _deliver_entries(self, read: list[tuple[bytes, Fields]]) -> None:
        for entry_id, fields in read:
            self.delivered_id = entry_id.decode()
            entry = entries.parse_entry(fields)
            if entry is None:
                self._malformed("stream entry")
                continue
            if not self.order.accept(entry.host, entry.number):
                continue
            ours = entry.host == self._host
            if entry.gather_id is not None:  # a question; our own workers were asked directly
                if not ours:
                    self._asked(entry.host.decode(errors="replace"), entry.gather_id,
                                entry.topic, entry.payload, entry.deadline)
                continue
            self._seq += 1
            self._deliver(self._seq, entry.topic, entry.payload, entry.skip if ours else None)

    def _answers(self, read: list[tuple[bytes, Fields]]) -> None:
        for _entry_id, fields in read:
            try:
                host, gather_id = fields[b"h"].decode(), int(fields[b"g"])
                answers = entries.parse_answers(fields[b"a"], host)
            except (KeyError, ValueError):
                answers = None
            if answers is None:
                self._malformed("gather answer")
            else:
                self._answered(host, gather_id, answers)

    def _malformed(self, what: str) -> None:
        """Someone else wrote to our keys: drop it, log the first, count them all."""
        self.malformed += 1
        if self.malformed == 1:
            log.error("a malformed %s in Redis, not written by a master: dropped (more are "
                      "counted in cluster-ctl status, not logged)", what)

    # -- the master's side --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        newest = self._link_status["newest_id"]
        lag_ms = max(0, _ms(newest) - _ms(self.delivered_id)) if newest and self.delivered_id \
            else 0
        return {"url": redact(self._url), "stream": self.stream, "host": self.host,
                "connected": self.channel is not None and self._link_status["connected"],
                "buffered": len(self.unconfirmed), "full": self.unconfirmed.full,
                "last_id": self.delivered_id, "lag_ms": lag_ms, "missed": self.order.missed,
                "malformed": self.malformed,
                "hosts_seen": sorted(self._link_status["hosts"]), "link_pid": self.pid,
                "link_restarts": self.restarts}

    def sockets(self) -> list[socket.socket]:
        """What a forked worker closes: its copy of the master's end."""
        return [] if self.channel is None else [self.channel.sock]

    def close(self) -> None:
        """The link sees its channel close and exits; the master reaps it."""
        self._restart_at = None
        if self.channel is not None:
            self._selector.unregister(self.channel.sock)
            self.channel.close()
            self.channel = None


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0] or 0)


def open_relay(deliver: Deliver, config: Config, app_name: str,
               selector: selectors.BaseSelector, on_full: Callable[[bool], None],
               workers: Callable[[], list[int]]) -> RedisRelay:
    """The relay ``--broker`` asks for, on the stream of ``--cluster-name`` (default: the app)."""
    assert config.broker is not None
    return RedisRelay(deliver, url=config.broker, cluster_name=config.cluster_name or app_name,
                      buffer=config.broker_buffer, stream_len=config.broker_stream_len,
                      selector=selector, log_level=config.log_level, log_format=config.log_format,
                      on_full=on_full, workers=workers)
