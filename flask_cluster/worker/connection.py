"""One client connection inside a worker, the socket side: read, write, ``sendfile``, a lingering
close, the TLS handshake. What the bytes mean is :class:`~flask_cluster.http.connection.HTTPConnection`'s.

Runs on the worker's loop thread only. Responses are written in request order (pipelining):
one request of a connection is answered at a time, the next only when it is done.

Here the rule that no bytes a client sends can kill a worker is kept. A request that cannot be
read (the parser's :class:`HTTPError`) or prepared (:meth:`Owner.start`'s :class:`ServerFault`)
is answered 400 or 500 after the requests before it, logged in one line with the peer, and its
connection closed; an error of ours escaping a connection's handlers ends that connection only
(:meth:`Connection.crashed`, called by the loop).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from typing import Protocol

from ..http.connection import HTTPConnection
from ..http.parser import Limits, Request
from ..http.wsgi import error_response

log = logging.getLogger("flask_cluster.worker")

READ_SIZE = 256 * 1024
HIGH_WATER = 256 * 1024  # stop producing body chunks while this much waits for the client
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
LINGER = 5.0  # seconds a refused client may go on sending before we close (RFC 9112 9.6)


class Exchange(Protocol):
    """One request being answered, whether the app runs on the loop or on a pool thread."""

    @property
    def paused(self) -> bool:
        """Waits for the client to drain before producing more (resumed by a writable event)."""

    def resume(self) -> None:
        """The client drained its buffer below the high-water mark."""

    def file_sent(self) -> None:
        """The ``sendfile`` transfer it started is complete."""

    def connection_lost(self) -> None:
        """The connection closed: stop, release what it holds, count its end once."""


class Owner(Protocol):
    """What a connection needs of the loop that owns it."""

    def start(self, conn: Connection, request: Request) -> None:
        """Answer ``request``: set ``conn.current`` while the answer is in progress."""

    def send_soon(self, conn: Connection) -> None:
        """``conn`` has answered what it can for now: flush it now or with the loop's pass."""

    def watch_writes(self, conn: Connection, on: bool) -> None: ...

    def stop_reading(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None:
        """The connection is closed: no more events for it."""


class Connection:
    __slots__ = ("sock", "owner", "http", "out", "out_size", "current", "closed", "last_active",
                 "want_write", "remote_addr", "remote_port", "file", "request_started",
                 "lingering", "answering_since")

    def __init__(self, owner: Owner, sock: socket.socket, limits: Limits, remote_addr: str,
                 remote_port: str) -> None:
        self.sock = sock
        self.owner = owner
        self.http = HTTPConnection(limits)
        self.out: list[bytes] = []
        self.out_size = 0
        self.current: Exchange | None = None  # the request being answered, if any
        self.closed = False
        self.want_write = False
        self.last_active = time.monotonic()
        self.request_started = 0.0  # when the first byte of the request being read arrived
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.file: tuple[int, int, int] | None = None  # (fd, offset, count) for os.sendfile
        self.lingering = 0.0  # when a lingering close gives up; 0: not lingering
        self.answering_since = 0.0  # when the request being answered was read (monotonic)

    @property
    def idle(self) -> bool:
        """Nothing in progress: no response, no unsent bytes, no partial request."""
        return self.current is None and not self.out and self.file is None and self.http.idle

    def push(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except WOULD_BLOCK:
            return
        except OSError:
            self.close()
            return
        self.last_active = time.monotonic()
        if self.lingering:
            if not data:
                self.close()  # the client is done sending: the close is clean now
            return  # the rest of a refused request: dropped
        http = self.http
        if not data:
            if self.idle:
                self.close()
            else:
                http.receive_data(data)
                self.owner.stop_reading(self)
                self.serve()
            return
        if not http.in_progress:
            self.request_started = self.last_active
        interim = http.receive_data(data)
        if interim:
            self.push(interim)
        self.serve()

    def serve(self) -> None:
        """Answer the parsed requests in order, one at a time; then a refusal, if one is due."""
        http = self.http
        requests = http.requests
        while requests and self.current is None and not self.closed:
            request = http.next_request()
            if request is None:
                break
            self.owner.start(self, request)
        if self.current is None and http.error is not None:
            refusal = http.refusal()
            if refusal:
                self._refused()
                self.push(refusal)
        self.owner.send_soon(self)

    def _refused(self) -> None:
        error = self.http.error
        assert error is not None
        if error.status >= 500 and error.status not in (501, 503, 505):
            log.error("request from %s:%s failed before the app: %s", self.remote_addr,
                      self.remote_port, error.detail, exc_info=error)
        else:
            log.info("refused a request from %s:%s: %d %s", self.remote_addr,
                     self.remote_port, error.status, error.detail)

    def crashed(self) -> None:
        """The last line of the invariant that no client can kill a worker: an error of ours
        that escaped this connection's handlers ends this connection only, with a 500 when no
        response of it has started, and a traceback in the log."""
        log.exception("internal error on the connection from %s:%s; closing it",
                      self.remote_addr, self.remote_port)
        if self.closed:
            return
        try:
            if self.current is None and not self.out and self.file is None:
                self.sock.send(error_response(500, "Internal Server Error", keep_alive=False))
        except OSError:
            pass
        try:
            self.close()
        except Exception:
            log.exception("error closing the connection from %s:%s", self.remote_addr,
                          self.remote_port)

    def time_out(self) -> None:
        """The client took too long to send its request headers: 408, then close."""
        self.push(self.http.time_out())
        self.flush()
        self.close()

    def flush(self) -> None:
        """Write what the kernel takes now; wait for writability for the rest."""
        if self.closed:
            return
        if self.out:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            try:
                sent = self.sock.send(data)
            except WOULD_BLOCK:
                sent = 0
            except OSError:
                self.close()
                return
            if sent == len(data):
                self.out.clear()
                self.out_size = 0
            else:
                self.out = [data[sent:]]
                self.out_size = len(data) - sent
        if not self.out and self.file is not None and not self._send_file():
            self.close()
            return
        # A response paused at the high-water mark is resumed by a writable event, so keep
        # asking for one even when this flush drained the buffer, or nothing would resume it.
        pending = bool(self.out) or self.file is not None or \
            (self.current is not None and self.current.paused)
        if pending != self.want_write:
            self.want_write = pending
            self.owner.watch_writes(self, pending)
        if not pending and self.current is None and self.http.closing and self.http.done:
            if self.http.error is None:
                self.close()
            elif not self.lingering:
                self._linger()

    def _linger(self) -> None:
        """Close in stages after refusing a request the client may still be sending (RFC 9112
        9.6): closing with its bytes unread would send a reset, which can destroy our response
        before the client reads it. Send FIN, drop what still comes, close on the client's FIN
        or after :data:`LINGER` seconds."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.lingering = time.monotonic() + LINGER

    def _send_file(self) -> bool:
        """Advance an ``os.sendfile`` transfer; False when the connection broke."""
        assert self.file is not None
        fd, offset, count = self.file
        while count > 0:
            try:
                sent = os.sendfile(self.sock.fileno(), fd, offset, min(count, 1 << 20))
            except (BlockingIOError, InterruptedError):
                self.file = (fd, offset, count)
                return True
            except OSError:
                return False
            if sent == 0:
                break  # the file is shorter than announced
            offset += sent
            count -= sent
        self.file = None
        assert self.current is not None  # the exchange that started the transfer
        self.current.file_sent()
        return True

    def on_writable(self) -> None:
        self.last_active = time.monotonic()
        self.flush()
        if not self.closed and self.out_size < HIGH_WATER and self.current is not None:
            self.current.resume()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner.forget(self)
        if self.current is not None:
            self.current.connection_lost()
        try:
            self.sock.close()
        except OSError:
            pass


class TLSConnection(Connection):
    """A connection wrapped in TLS: a non-blocking handshake first, then as :class:`Connection`.

    Decrypted bytes can wait inside the TLS layer while the socket itself is not readable, so a
    read goes on while ``pending()`` says there is more.
    """

    __slots__ = ("handshaking",)

    def __init__(self, owner: Owner, sock: ssl.SSLSocket, limits: Limits, remote_addr: str,
                 remote_port: str) -> None:
        super().__init__(owner, sock, limits, remote_addr, remote_port)
        self.handshaking = True

    def on_readable(self) -> None:
        if self.handshaking:
            self._handshake()
            return
        super().on_readable()
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        http = self.http
        while not self.closed and not http.closing and http.error is None and sock.pending():
            super().on_readable()

    def on_writable(self) -> None:
        if self.handshaking:
            self._handshake()
            return
        super().on_writable()

    def _handshake(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write(False)
            return
        except ssl.SSLWantWriteError:
            self._want_write(True)
            return
        except (ssl.SSLError, OSError):
            self.close()  # a plain-HTTP client or a failed handshake: only this connection ends
            return
        self.handshaking = False
        self.last_active = time.monotonic()
        self._want_write(False)
        if sock.pending():
            self.on_readable()

    def _want_write(self, on: bool) -> None:
        if on != self.want_write:
            self.want_write = on
            self.owner.watch_writes(self, on)
