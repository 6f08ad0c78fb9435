"""Kept-alive connections handed back to the master instead of closed.

A worker retired on purpose (a rolling reload, a ``--max-requests`` or ``--max-memory`` renewal,
a scale down) would otherwise close its kept-alive connections, and a client that sends its next
request at that moment sees the connection reset under it. Instead the worker passes each idle
connection back to the master at once, and each busy one as soon as its response is complete,
over its end of the hand-off channel; the master gives them to another worker
(``Dispatcher.came_back``). The client's connection never closes.

Nothing the worker read has to travel with a connection: one is handed back only between
requests with nothing of a next request read (:attr:`Connection.idle`), and a busy one is not
read from while it waits for its response to complete, so whatever its client sends meanwhile
stays in the kernel's buffer, which goes with the descriptor. What cannot move is finished as a
stopping worker always did: a TLS connection (its session lives in this process), a request
half read, or pipelined requests already read (answered with ``Connection: close``).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from .. import ipc
from ..http.parser import Request
from ..scoreboard import now_ms
from .connection import Connection
from .engine import Engine

log = logging.getLogger("flask_cluster.worker")


def movable(conn: Connection) -> bool:
    """``conn`` may change process once it is idle: not TLS, and not on its way to a close."""
    return type(conn) is Connection and not conn.closed and not conn.lingering \
        and conn.http.error is None and not conn.http.closing


class HandBack:
    """Passes connections back to the master over the worker's end of its hand-off channel (the
    channel runs both ways). The one way out for a kept-alive connection that should be served
    elsewhere: by a retiring worker, and by a busy one that lets another serve its idle ones."""

    def __init__(self, engine: Engine, channel: socket.socket) -> None:
        self.engine = engine
        self.channel = channel

    def hand_back(self, conns: Sequence[Connection]) -> list[Connection]:
        """Hand idle ``conns`` to the master without closing them (only our copies close; the
        client's connection stays open). Returns those the channel did not take now (it is
        full: try again later). With the master gone, closes them as a stopping worker would."""
        for start in range(0, len(conns), ipc.PACKET_FDS):
            batch = conns[start:start + ipc.PACKET_FDS]
            try:
                sent = ipc.send_connections(self.channel, [conn.sock.fileno() for conn in batch],
                                            [_peer(conn) for conn in batch])
            except ipc.ChannelClosed:
                sent = True  # nobody to hand them to: close them
            if not sent:
                return list(conns[start:])
            for conn in batch:
                conn.close()
        return []

    def pass_on(self, passed: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Connections the master passed and we never read: back as they came. Returns those
        the channel did not take."""
        for start in range(0, len(passed), ipc.PACKET_FDS):
            batch = passed[start:start + ipc.PACKET_FDS]
            try:
                if not ipc.send_connections(self.channel, [fd for fd, _ in batch],
                                            [peer for _, peer in batch]):
                    return passed[start:]
            except ipc.ChannelClosed:
                return passed[start:]
            for fd, _ in batch:
                os.close(fd)
        return []


class Retirement:
    """A worker retired on purpose: its idle kept-alive connections go back to the master now,
    its busy ones once their response is complete. Costs nothing before :meth:`begin`: it
    watches the connections it waits for only after each batch of events, and only while some
    are left."""

    def __init__(self, hand_back: HandBack) -> None:
        self.hand_back = hand_back
        self.engine = hand_back.engine
        self._unread = _Unread(self.engine)
        self.handed = 0

    def begin(self) -> None:
        """Before the engine stops (which would close the idle ones)."""
        engine = self.engine
        idle: list[Connection] = []
        for conn in engine.connections:
            if not movable(conn):
                continue
            if conn.idle:
                idle.append(conn)
            elif not conn.http.has_requests and not conn.http.in_progress:
                self._wait_for(conn)  # one response in progress, nothing after it read
        for conn in self._send(idle):
            self._wait_for(conn)
        if engine.moving:
            engine.idle_callbacks.append(self._after_events)
        log.info("handing %d idle kept-alive connection(s) to the other workers, %d more "
                 "once their response is complete", len(idle), len(engine.moving))

    def _send(self, conns: list[Connection]) -> list[Connection]:
        left = self.hand_back.hand_back(conns)
        self.handed += len(conns) - len(left)
        return left

    def _wait_for(self, conn: Connection) -> None:
        """No more reads on ``conn``: what its client sends next stays in the kernel's buffer
        and goes with it."""
        conn.owner = self._unread
        self.engine.moving.add(conn)
        self._unread.watch_writes(conn, conn.want_write)

    def _after_events(self) -> None:
        moving = self.engine.moving
        done = [conn for conn in moving if conn.closed or conn.idle]
        if not done:
            return
        moving.difference_update(done)
        # A response that ended with "Connection: close" closed its connection already.
        moving.update(self._send([conn for conn in done if not conn.closed]))
        if not moving:
            self.engine.idle_callbacks.remove(self._after_events)


class _Unread:
    """The owner of a connection waiting to be handed back: the engine, without reading."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, conn: Connection, request: Request) -> None:
        self.engine.start(conn, request)

    def send_soon(self, conn: Connection) -> None:
        conn.flush()

    def watch_writes(self, conn: Connection, on: bool) -> None:
        selector = self.engine.selector
        try:
            if on:
                selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            else:
                selector.unregister(conn.sock)
        except KeyError:
            if on:
                selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        except ValueError:
            pass  # closed

    def stop_reading(self, conn: Connection) -> None:
        pass  # already not reading

    def forget(self, conn: Connection) -> None:
        self.engine.forget(conn)


def _peer(conn: Connection) -> bytes:
    return ipc.encode_peer((conn.remote_addr, conn.remote_port)) if conn.remote_addr else b""


STUCK_MS = 1000  # a loop that has not beaten for this long is held by a request
WATCH_EVERY = 0.25


class Unserved:
    """Connections taken off the hand-off channel and not served yet, and, with ``--threads 1``,
    a watchdog for them. The loop serves a batch one connection after another, the app running
    on it; if one request holds the loop (a long view, or a hang that ends with the worker
    killed), the rest of the batch would wait with it, or die with it. The watchdog thread
    hands them back to the master instead once the loop has not beaten for :data:`STUCK_MS`.
    Each is popped by one side only, so none is both served here and handed back."""

    def __init__(self, channel: socket.socket, heartbeat_ms: Callable[[], int]) -> None:
        self.queue: deque[tuple[socket.socket, ipc.Peer]] = deque()
        self.channel = channel
        self.heartbeat_ms = heartbeat_ms

    def watch(self) -> None:
        threading.Thread(target=self._watch, name="unserved-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY)
            if self.queue and now_ms() - self.heartbeat_ms() > STUCK_MS:
                self._hand_back()

    def _hand_back(self) -> None:
        taken: list[tuple[socket.socket, ipc.Peer]] = []
        while True:
            try:
                taken.append(self.queue.popleft())
            except IndexError:
                break
        for start in range(0, len(taken), ipc.PACKET_FDS):
            batch = taken[start:start + ipc.PACKET_FDS]
            try:
                sent = ipc.send_connections(
                    self.channel, [sock.fileno() for sock, _ in batch],
                    [ipc.encode_peer(peer) if peer[0] else b"" for _, peer in batch])
            except ipc.ChannelClosed:
                sent = False
            if not sent:
                self.queue.extendleft(reversed(taken[start:]))  # served when the loop is back
                return
            for sock, _ in batch:
                sock.close()
        log.warning("a request holds the loop: handed %d waiting connection(s) back to the "
                    "master", len(taken))
