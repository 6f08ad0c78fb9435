"""One client connection inside a worker: read, parse, hand requests to the engine, write.

Runs on the worker's loop thread only. Responses are written in request order (pipelining):
the engine serves one request of a connection at a time and the next only when it is done.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from ..http.errors import HTTPError
from ..http.parser import RequestParser
from ..http.wsgi import error_response

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("flask_cluster.worker")

READ_SIZE = 256 * 1024
HIGH_WATER = 256 * 1024  # stop producing body chunks while this much waits for the client
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
LINGER = 5.0  # seconds a refused client may go on sending before we close (RFC 9112 9.6)


class Connection:
    __slots__ = ("sock", "engine", "parser", "out", "out_size", "current", "closing", "closed",
                 "last_active", "want_write", "remote_addr", "remote_port", "error", "file",
                 "request_started", "lingering")

    def __init__(self, engine: Engine, sock: socket.socket, remote_addr: str, remote_port: str) -> None:
        self.sock = sock
        self.engine = engine
        self.parser = RequestParser(engine.limits)
        self.out: list[bytes] = []
        self.out_size = 0
        self.current: Any = None  # the exchange being answered, if any
        self.closing = False      # close once everything queued is written
        self.closed = False
        self.want_write = False
        self.last_active = time.monotonic()
        self.request_started = 0.0  # when the first byte of the request being read arrived
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.error: HTTPError | None = None
        self.file: tuple[int, int, int] | None = None  # (fd, offset, count) for os.sendfile
        self.lingering = 0.0  # when a lingering close gives up; 0: not lingering

    @property
    def idle(self) -> bool:
        """Nothing in progress: no response, no unsent bytes, no partial request."""
        return (self.current is None and not self.out and self.file is None
                and not self.parser.requests and not self.parser.in_progress)

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
        if not data:
            if self.idle:
                self.close()
            else:  # half-closed: answer what was asked, then close
                self.closing = True
                self.engine.stop_reading(self)
                self.engine.serve(self)
            return
        if self.error is not None or self.closing:
            return  # bytes after a refused request or after "Connection: close" are ignored
        parser = self.parser
        if not parser.in_progress:
            self.request_started = self.last_active
        try:
            parser.feed(data)
        except HTTPError as exc:
            self.error = exc
        if parser.continue_wanted:
            parser.continue_wanted = False
            if parser.in_progress and self.current is None and not parser.requests:
                self.push(CONTINUE)
        if parser.upgraded:
            self.closing = True
        self.engine.serve(self)

    def after_requests(self) -> None:
        """Called by the engine when every parsed request is answered."""
        error = self.error
        if error is not None and not self.closing:
            if error.status >= 500 and error.status not in (501, 505):
                log.error("request from %s:%s failed before the app: %s", self.remote_addr,
                          self.remote_port, error.detail, exc_info=error)
            else:
                log.info("refused a request from %s:%s: %d %s", self.remote_addr,
                         self.remote_port, error.status, error.detail)
            self.push(error_response(error.status, error.reason, keep_alive=False))
            self.closing = True

    def time_out(self) -> None:
        """The client took too long to send its request headers: 408, then close."""
        self.parser.requests.clear()
        self.push(error_response(408, "Request Timeout", keep_alive=False))
        self.closing = True
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
            self.engine.watch_writes(self, pending)
        if not pending and self.closing and self.current is None and not self.parser.requests:
            if self.error is None:
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
        self.engine.file_sent(self)
        return True

    def on_writable(self) -> None:
        self.last_active = time.monotonic()
        self.flush()
        if not self.closed and self.out_size < HIGH_WATER:
            self.engine.resume(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.engine.forget(self)
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

    def __init__(self, engine: Engine, sock: ssl.SSLSocket, remote_addr: str, remote_port: str) -> None:
        super().__init__(engine, sock, remote_addr, remote_port)
        self.handshaking = True

    def on_readable(self) -> None:
        if self.handshaking:
            self._handshake()
            return
        super().on_readable()
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        while not self.closed and not self.closing and self.error is None and sock.pending():
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
            self.engine.watch_writes(self, on)
