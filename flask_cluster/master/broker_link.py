"""The broker link: the process that does a master's Redis I/O (``python -m`` this module).

The master starts it with ``posix_spawn`` (not ``fork``: a fork of the master taken while a
module lock was held, such as a fork after workers exist, can wait on that lock forever) and
passes one end of a socket pair as fd 3; the first frame on it holds the settings. It runs two
threads, each on its own Redis connection, because a reader blocked in ``XREAD`` cannot write
on the same connection: the reader follows the cluster's stream and this host's inbox, the
writer appends what the master sends, announces this host every second and lists the others.
Its loop trades frames with the master (``("p", number, stream, fields)`` and ``("r", stream,
fields)`` and ``("w", announcement)`` in; ``("e", entries)``, ``("i", entries)``, ``("c",
number)`` and ``("s", status)`` out).

It keeps nothing the master cannot rebuild: numbered entries stay with the master until this
process confirms that Redis took them, so when it dies the master starts another and sends them
again (:mod:`.redis_relay`).
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import selectors
import signal
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import ipc
from ..logs import configure
from ..proctitle import set_title
from ..wakeup import Wakeup
from .entries import Fields

log = logging.getLogger("flask_cluster.master")

CHANNEL_FD = 3
BATCH = 512  # entries per XADD pipeline and per XREAD
BLOCK_MS = 500  # how long an XREAD waits; also how soon a stopping reader notices
SOCKET_TIMEOUT = 5.0
STATUS_EVERY = 0.5  # seconds between status reports to the master
ANNOUNCE_EVERY = 1.0  # seconds between refreshes of this host's key (and reads of the others')
HOST_TTL = 5  # seconds a host's key outlives its last refresh
INBOX_LEN = 1000  # answers kept in a host's inbox stream
INBOX_TTL = 600  # seconds an inbox outlives its last answer (its host may be gone for good)
RETRY_FIRST, RETRY_CAP = 0.05, 2.0  # seconds between reconnection attempts, doubling


def stream_key(cluster_name: str) -> str:
    """The stream every broadcast and gather question of the cluster goes through."""
    return f"flask-cluster:{cluster_name}:stream"


def host_key(cluster_name: str, host: str) -> str:
    """``host``'s announcement (its worker ids), with a TTL its link refreshes."""
    return f"flask-cluster:{cluster_name}:host:{host}"


def hosts_key(cluster_name: str) -> str:
    """The set of hosts that announced themselves, so no reader needs to ``SCAN`` for them."""
    return f"flask-cluster:{cluster_name}:hosts"


def inbox_key(cluster_name: str, host: str) -> str:
    """The stream of answers to ``host``'s gathers, read by ``host`` only."""
    return f"flask-cluster:{cluster_name}:inbox:{host}"


def connect(url: str) -> redis.Redis:
    """One connection to ``url``; no retries of its own: the link retries, in order."""
    password = None if urllib.parse.urlsplit(url).password else os.environ.get("REDIS_PASSWORD")
    return redis.Redis.from_url(url, password=password, single_connection_client=True,
                                socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                                retry=Retry(NoBackoff(), 0))


def redact(url: str) -> str:
    """``url`` without its password, for logs and status."""
    scheme, sep, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{place}" if user else f"{scheme}{sep}***@{place}"


class Outbox:
    """What waits for Redis, in order: ``(stream, fields, number)``; thread-safe. Unbounded: the
    master bounds what it sends (``--broker-buffer``)."""

    def __init__(self) -> None:
        self._entries: deque[tuple[str, Fields, int]] = deque()
        self._ready = threading.Condition()

    def put(self, entries: list[tuple[str, Fields, int]]) -> None:
        with self._ready:  # one wake-up for all that one read from the master brought
            self._entries.extend(entries)
            self._ready.notify()

    def peek(self, count: int, timeout: float) -> list[tuple[str, Fields, int]]:
        """The oldest ``count`` entries, still queued; waits up to ``timeout`` for one."""
        with self._ready:
            if not self._entries:
                self._ready.wait(timeout)
            return [self._entries[index] for index in range(min(count, len(self._entries)))]

    def sent(self, count: int) -> None:
        with self._ready:
            for _ in range(count):
                self._entries.popleft()

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()

    def __len__(self) -> int:
        return len(self._entries)


class Link:
    def __init__(self, channel: ipc.MessageChannel, settings: dict[str, Any],
                 connect: Callable[[str], Any] = connect) -> None:
        self.channel = channel
        self._url: str = settings["url"]
        self._connect = connect
        self.cluster_name: str = settings["cluster_name"]
        self.host: str = settings["host"]
        self.stream = stream_key(self.cluster_name)
        self.inbox = inbox_key(self.cluster_name, self.host)
        self.host_key = host_key(self.cluster_name, self.host)
        self.hosts_key = hosts_key(self.cluster_name)
        self.stream_len: int = settings["stream_len"]
        self.last_id: bytes = settings["last_id"].encode()
        self.inbox_id = b"0-0"  # the inbox is this host's alone: all of it is for us
        self.outbox = Outbox()
        self.confirmed = 0  # the highest number Redis took
        self.announcement = b""
        self.hosts: dict[str, bytes] = {}
        self.newest_id = b""
        self._wakeup = Wakeup()  # the threads wake the loop for new entries and confirmations
        self._inbox: deque[tuple[str, list[tuple[bytes, Fields]]]] = deque()
        self._up = {"reading": False, "writing": False}
        self._stopping = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._read, daemon=True),
                   threading.Thread(target=self._write, daemon=True)]
        for thread in threads:
            thread.start()
        selector = selectors.DefaultSelector()
        selector.register(self.channel.sock, selectors.EVENT_READ)
        selector.register(self._wakeup.reader, selectors.EVENT_READ)
        told = 0
        next_status = 0.0
        try:
            while True:
                selector.select(STATUS_EVERY)
                try:
                    self.take(self.channel.receive())
                    now = time.monotonic()
                    if now >= next_status:
                        next_status = now + STATUS_EVERY
                        self._status()
                    told = self._forward(told)
                except ipc.ChannelClosed:  # the master stopped (or died): so did its workers
                    # The writer announces no more. The host's key is left to expire (5 s),
                    # as a dead host's is: a gather meanwhile names its workers missing rather
                    # than answering as if they had never been there.
                    self._stopping.set()
                    return
        finally:
            self._stopping.set()
            self.outbox.wake()

    def take(self, frames: list[bytes]) -> None:
        """What the master sent: entries for Redis, and the announcement of this host."""
        entries = []
        for frame in frames:
            message = marshal.loads(frame)
            kind = message[0]
            if kind == "p":
                _kind, number, fields = message
                entries.append((self.stream, fields, number))
            elif kind == "r":
                _kind, host, fields = message
                entries.append((inbox_key(self.cluster_name, host), fields, 0))
            else:
                self.announcement = message[1]
        if entries:
            self.outbox.put(entries)

    def _forward(self, told: int) -> int:
        """Send the master what the threads read and confirmed since; returns what is confirmed."""
        self._wakeup.drain()
        while self._inbox:
            self.channel.queue(marshal.dumps(self._inbox.popleft()))
        confirmed = self.confirmed
        if confirmed > told:
            self.channel.queue(marshal.dumps(("c", confirmed)))
        self.channel.sock.setblocking(True)  # the master reads at once; never drop an entry
        try:
            self.channel.flush()
        finally:
            self.channel.sock.setblocking(False)
        return confirmed

    def _status(self) -> None:
        self.channel.queue(marshal.dumps(("s", {
            "connected": all(self._up.values()), "hosts": dict(self.hosts),
            "newest_id": self.newest_id.decode()})))

    # -- the threads --------------------------------------------------------------------------

    def _read(self) -> None:
        self._with_redis("reading", self._read_from)

    def _read_from(self, client: Any) -> None:
        while not self._stopping.is_set():
            reply = client.xread({self.stream: self.last_id, self.inbox: self.inbox_id},
                                 count=BATCH, block=BLOCK_MS)
            for stream, entries in reply or ():
                if not entries:
                    continue
                if stream.decode() == self.stream:
                    self._inbox.append(("e", entries))
                    self.last_id = entries[-1][0]
                else:
                    self._inbox.append(("i", entries))
                    self.inbox_id = entries[-1][0]
                self._wakeup.wake()

    def _write(self) -> None:
        self._with_redis("writing", self._write_to)

    def _write_to(self, client: Any) -> None:
        next_announce = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_announce:
                next_announce = time.monotonic() + ANNOUNCE_EVERY
                self._announce(client)
            batch = self.outbox.peek(BATCH, BLOCK_MS / 1000)
            if not batch:
                continue
            pipe = client.pipeline(transaction=False)
            for stream, fields, number in batch:
                if number:
                    pipe.xadd(stream, fields, maxlen=self.stream_len, approximate=True)
                else:
                    pipe.xadd(stream, fields, maxlen=INBOX_LEN, approximate=True)
                    pipe.expire(stream, INBOX_TTL)
            pipe.execute()
            self.outbox.sent(len(batch))
            self.confirmed = max([self.confirmed] + [number for _s, _f, number in batch])
            self._wakeup.wake()

    def _announce(self, client: Any) -> None:
        """Refresh this host's key; read every host's (ours too: the master leaves itself out)."""
        pipe = client.pipeline(transaction=False)
        if self.announcement:
            pipe.set(self.host_key, self.announcement, ex=HOST_TTL)
            pipe.sadd(self.hosts_key, self.host)
        pipe.smembers(self.hosts_key)
        hosts = sorted(member.decode(errors="replace") for member in pipe.execute()[-1])
        values = client.mget([host_key(self.cluster_name, host) for host in hosts]) if hosts else []
        gone = [host for host, value in zip(hosts, values, strict=True) if value is None]
        if gone:  # their keys expired: they stopped announcing
            client.srem(self.hosts_key, *gone)
        self.hosts = {host: value for host, value in zip(hosts, values, strict=True)
                      if value is not None}
        newest = client.xrevrange(self.stream, count=1)
        self.newest_id = newest[0][0] if newest else b""

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


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the master decides
    sock = socket.socket(fileno=CHANNEL_FD)
    sock.setblocking(False)
    channel = ipc.MessageChannel(sock)
    frames: list[bytes] = []
    while not frames:
        select.select([sock], [], [])
        frames = channel.receive()
    settings: dict[str, Any] = marshal.loads(frames[0])
    configure(settings["log_level"], settings["log_format"])
    set_title(f"flask-cluster broker link [{settings['cluster_name']}]")
    link = Link(channel, settings)
    link.take(frames[1:])
    link.run()


if __name__ == "__main__":
    main()
