"""Broadcasts across machines: every master appends to one Redis Stream and delivers what it reads.

The stream is the one total order: a master does not deliver its own workers' broadcasts when
they arrive but when it reads them back, so every host fans out the same entries in the same
order. A broker process per master, forked before any worker, does the Redis I/O on two
threads, each on its own connection (one blocks in ``XREAD``, the other appends); it trades
frames with the master over a socket pair, so the master's loop never waits on the network and
the hub delivers on the loop thread.

What survives a blip: outgoing broadcasts wait in a bounded :class:`Outbox` in order until Redis
took them; the reader resumes from the last id it read. A write whose reply was lost is sent
again, so an entry can appear twice in the stream: each entry carries its host's id and a number
counting up per host, and every reader drops a number it has seen (:class:`Order`), so all hosts
skip the same copies. A gap in a host's numbers means the stream was trimmed (``MAXLEN ~``) past
entries this master never read: it logs how many it missed.
"""

from __future__ import annotations

import logging
import marshal
import os
import selectors
import signal
import socket
import threading
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import ipc
from ..config import Config
from ..proctitle import set_title
from ..wakeup import Wakeup
from .hub import Deliver

log = logging.getLogger("flask_cluster.master")

BATCH = 512  # entries per XADD pipeline and per XREAD
BLOCK_MS = 500  # how long an XREAD waits; also how soon a stopping reader notices
SOCKET_TIMEOUT = 5.0
STATUS_EVERY = 0.5  # seconds between the broker process's status reports to the master
RETRY_FIRST, RETRY_CAP = 0.05, 2.0  # seconds between reconnection attempts, doubling
Fields = dict[bytes, bytes]


def stream_key(cluster_name: str) -> str:
    return f"flask-cluster:{cluster_name}:stream"


def connect(url: str) -> redis.Redis:
    """One connection to ``url``; no retries of its own: the relay retries, in order."""
    password = None if urllib.parse.urlsplit(url).password else os.environ.get("REDIS_PASSWORD")
    return redis.Redis.from_url(url, password=password, single_connection_client=True,
                                socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                                retry=Retry(NoBackoff(), 0))


class Outbox:
    """Broadcasts waiting for Redis, in order, at most ``limit`` of them; thread-safe."""

    def __init__(self, host: str, limit: int) -> None:
        self.host = host.encode()
        self.limit = limit
        self.dropped = 0
        self._entries: deque[Fields] = deque()
        self._number = 0  # numbers only what is kept: a gap then means trimmed, not dropped
        self._ready = threading.Condition()

    def put(self, topic: str, payload: bytes, skip: int | None) -> bool:
        """Queue a broadcast; ``False`` (and counted) when ``limit`` are waiting already."""
        with self._ready:
            if len(self._entries) >= self.limit:
                self.dropped += 1
                return False
            self._number += 1
            self._entries.append({b"h": self.host, b"n": b"%d" % self._number,
                                  b"t": topic.encode(), b"p": payload,
                                  b"k": b"" if skip is None else b"%d" % skip})
            self._ready.notify()
        return True

    def peek(self, count: int, timeout: float) -> list[Fields]:
        """The oldest ``count`` entries, still queued; waits up to ``timeout`` for one."""
        with self._ready:
            if not self._entries:
                self._ready.wait(timeout)
            return [self._entries[index] for index in range(min(count, len(self._entries)))]

    def sent(self, count: int) -> None:
        """Redis took the oldest ``count``."""
        with self._ready:
            for _ in range(count):
                self._entries.popleft()

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()

    def __len__(self) -> int:
        return len(self._entries)


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


class Link:
    """The broker process: two threads, each with its own Redis connection, and a loop that
    trades frames with the master (``("p", topic, payload, skip)`` in; ``("e", entries)`` and
    ``("s", status)`` out)."""

    def __init__(self, channel: ipc.MessageChannel, *, url: str, stream: str, host: str,
                 buffer: int, stream_len: int, connect: Callable[[str], Any] = connect) -> None:
        self.channel = channel
        self._url = url
        self._connect = connect
        self.stream = stream
        self.stream_len = stream_len
        self.outbox = Outbox(host, buffer)
        self._wakeup = Wakeup()  # the reader thread wakes the loop for new entries
        self._inbox: deque[tuple[bytes, Fields]] = deque()  # read, not yet sent to the master
        self.last_id = b""  # of the last entry read; where reading resumes
        self._up = {"reading": False, "writing": False}
        self._positioned = threading.Event()  # the reader knows where the stream ends
        self._stopping = threading.Event()
        self._overflowing = False

    def run(self) -> None:
        threads = [threading.Thread(target=self._read, daemon=True),
                   threading.Thread(target=self._write, daemon=True)]
        for thread in threads:
            thread.start()
        selector = selectors.DefaultSelector()
        selector.register(self.channel.sock, selectors.EVENT_READ)
        selector.register(self._wakeup.reader, selectors.EVENT_READ)
        try:
            while True:
                selector.select(STATUS_EVERY)
                try:
                    frames = self.channel.receive()
                except ipc.ChannelClosed:
                    return  # the master is gone
                for frame in frames:
                    _kind, topic, payload, skip = marshal.loads(frame)
                    self._publish(topic, payload, skip)
                self._forward()
        finally:
            self._stopping.set()
            self.outbox.wake()

    def _publish(self, topic: str, payload: bytes, skip: int | None) -> None:
        if self.outbox.put(topic, payload, skip):
            self._overflowing = False
        elif not self._overflowing:  # one line per overflow, not one per broadcast
            self._overflowing = True
            log.error("broker unreachable and %d broadcasts waiting (--broker-buffer): dropping "
                      "broadcasts until it is back", self.outbox.limit)

    def _forward(self) -> None:
        self._wakeup.drain()
        entries = []
        while self._inbox:
            entries.append(self._inbox.popleft())
        if entries:
            self.channel.queue(marshal.dumps(("e", entries)))
        self.channel.queue(marshal.dumps(("s", {
            "connected": all(self._up.values()), "buffered": len(self.outbox),
            "dropped": self.outbox.dropped})))
        self.channel.sock.setblocking(True)  # the master reads at once; never drop an entry
        try:
            self.channel.flush()
        finally:
            self.channel.sock.setblocking(False)

    # -- the threads --------------------------------------------------------------------------

    def _read(self) -> None:
        self._with_redis("reading", self._read_from)

    def _read_from(self, client: Any) -> None:
        if not self._positioned.is_set():
            # Start after the last entry now, and only then let the writer append: our own
            # first broadcast is read back, and nothing older is replayed.
            newest = client.xrevrange(self.stream, count=1)
            self.last_id = newest[0][0] if newest else b"0-0"
            self._positioned.set()
        while not self._stopping.is_set():
            reply = client.xread({self.stream: self.last_id}, count=BATCH, block=BLOCK_MS)
            for _stream, entries in reply or ():
                if entries:
                    self._inbox.extend(entries)
                    self.last_id = entries[-1][0]
                    self._wakeup.wake()

    def _write(self) -> None:
        self._positioned.wait()
        self._with_redis("writing", self._write_to)

    def _write_to(self, client: Any) -> None:
        while not self._stopping.is_set():
            batch = self.outbox.peek(BATCH, BLOCK_MS / 1000)
            if not batch:
                continue
            pipe = client.pipeline(transaction=False)
            for fields in batch:
                pipe.xadd(self.stream, fields, maxlen=self.stream_len, approximate=True)
            pipe.execute()
            self.outbox.sent(len(batch))

    def _with_redis(self, doing: str, work: Callable[[Any], None]) -> None:
        """Run ``work`` on a connection until stopped; on errors log once, back off, reconnect."""
        delay = RETRY_FIRST
        failing = False
        while not self._stopping.is_set():
            client = None
            try:
                client = self._connect(self._url)
                client.ping()
                if failing:
                    log.warning("broker %s back: %s resumes", redact(self._url), doing)
                failing = False
                delay = RETRY_FIRST
                self._up[doing] = True
                work(client)
            except (redis.RedisError, OSError) as exc:
                self._up[doing] = False
                if not failing:
                    log.error("broker %s lost while %s (%s): retrying; broadcasts wait, HTTP "
                              "goes on", redact(self._url), doing, exc)
                failing = True
                self._stopping.wait(delay)
                delay = min(RETRY_CAP, delay * 2)
            finally:
                if client is not None:
                    client.close()


class RedisRelay:
    """A :class:`~flask_cluster.master.hub.Relay` through a Redis Stream shared by every host.

    The Redis I/O runs in a process of its own, forked before any worker: threads in the master
    would be forked along with it mid-import and leave a worker waiting forever on a module
    lock they held. The master trades non-blocking frames with it, on its own loop.
    """

    def __init__(self, deliver: Deliver, *, url: str, cluster_name: str, buffer: int,
                 stream_len: int, selector: selectors.BaseSelector) -> None:
        self._deliver = deliver
        self._url = url
        self.stream = stream_key(cluster_name)
        self.host = uuid.uuid4().hex
        self._host = self.host.encode()
        self.order = Order()
        self._seq = 0
        self.delivered_id = b""
        self.lag = 0
        self._link_status: dict[str, Any] = {"connected": False, "buffered": 0, "dropped": 0}
        ours, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # the broker process
            code = 1
            try:
                ours.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides when to stop
                set_title(f"flask-cluster broker [{cluster_name}]")
                theirs.setblocking(False)
                Link(ipc.MessageChannel(theirs), url=url, stream=self.stream, host=self.host,
                     buffer=buffer, stream_len=stream_len).run()
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        self.channel = ipc.MessageChannel(ours)
        self._selector = selector
        selector.register(ours, selectors.EVENT_READ, self._on_ready)

    def publish(self, topic: str, payload: bytes, skip: int | None) -> None:
        self.channel.queue(marshal.dumps(("p", topic, payload, skip)))
        if not self.channel.flush():
            self._selector.modify(self.channel.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                  self._on_ready)

    def _on_ready(self, _sock: Any, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and self.channel.flush():
            self._selector.modify(self.channel.sock, selectors.EVENT_READ, self._on_ready)
        if not mask & selectors.EVENT_READ:
            return
        try:
            frames = self.channel.receive()
        except ipc.ChannelClosed:
            log.error("the broker process is gone: broadcasts stop until the master restarts")
            self._selector.unregister(self.channel.sock)
            return
        for frame in frames:
            kind, body = marshal.loads(frame)
            if kind == "s":
                self._link_status = body
            else:
                self._deliver_entries(body)

    def _deliver_entries(self, entries: list[tuple[bytes, Fields]]) -> None:
        for entry_id, fields in entries:
            self.delivered_id = entry_id
            if not self.order.accept(fields[b"h"], int(fields[b"n"])):
                continue
            skip = int(fields[b"k"]) if fields[b"k"] and fields[b"h"] == self._host else None
            self._seq += 1
            self._deliver(self._seq, fields[b"t"].decode(), fields[b"p"], skip)

    def status(self) -> dict[str, Any]:
        return {"url": redact(self._url), "stream": self.stream, **self._link_status,
                "last_id": self.delivered_id.decode(), "missed": self.order.missed,
                "hosts_seen": len(self.order.last)}

    def sockets(self) -> list[socket.socket]:
        """What a forked worker closes: its copy of the master's end."""
        return [self.channel.sock]

    def close(self) -> None:
        """The broker process sees its channel close and exits; the master reaps it."""
        if self.channel.sock.fileno() in self._selector.get_map():
            self._selector.unregister(self.channel.sock)
        self.channel.close()


def redact(url: str) -> str:
    """``url`` without its password, for logs and status."""
    scheme, sep, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{place}" if user else f"{scheme}{sep}***@{place}"


def open_relay(deliver: Deliver, config: Config, app_name: str,
               selector: selectors.BaseSelector) -> RedisRelay:
    """The relay ``--broker`` asks for, on the stream of ``--cluster-name`` (default: the app)."""
    assert config.broker is not None
    return RedisRelay(deliver, url=config.broker, cluster_name=config.cluster_name or app_name,
                      buffer=config.broker_buffer, stream_len=config.broker_stream_len,
                      selector=selector)
