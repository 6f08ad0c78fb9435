"""``/metrics`` over HTTP, answered by the master on its own selector loop.

A scrape never waits behind a worker: the master answers it from the scoreboard and the app
metrics files, between its other events. The responder is deliberately small: one ``GET`` per
connection, the answer, then close; a client that sends nothing useful within READ_TIMEOUT, or
too much, is dropped, and at most MAX_CLIENTS are served at once so a scraper cannot hold the
master's loop.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flask_cluster.master")

MAX_HEAD = 8192
MAX_CLIENTS = 16
READ_TIMEOUT = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client.CONTENT_TYPE_LATEST


class MetricsServer:
    def __init__(self, host: str, port: int, selector: selectors.BaseSelector,
                 render: Callable[[], bytes]) -> None:
        """``render``: the body of ``GET /metrics``, made at each scrape."""
        self.selector = selector
        self.render = render
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(MAX_CLIENTS)
        except OSError as exc:
            self.sock.close()
            raise MetricsError(f"cannot serve metrics on {host}:{port}: "
                               f"{exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self.clients: dict[socket.socket, _Client] = {}
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def _accept(self, _sock: Any, _mask: int) -> None:
        self._expire(time.monotonic())
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the scraper retries
                log.warning("metrics: accept failed: %s", exc)
                return
            if len(self.clients) >= MAX_CLIENTS:  # refused, not left to wake the loop again
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, time.monotonic() + READ_TIMEOUT)
            self.clients[sock] = client
            self.selector.register(sock, selectors.EVENT_READ, lambda s, m, c=client: self._read(c))

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        client.head += data
        if b"\r\n\r\n" not in client.head and b"\n\n" not in client.head:
            if len(client.head) > MAX_HEAD:
                self._close(client)
            return
        self.selector.unregister(client.sock)
        client.out = self._answer(bytes(client.head))
        self._write(client)

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        method, target = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET /metrics\n", "text/plain")
        if path != b"/metrics":
            return _response("404 Not Found", b"metrics are at /metrics\n", "text/plain")
        try:
            body = self.render()
        except Exception:  # an unreadable app metrics file, say: the scrape fails, not the master
            log.exception("metrics: cannot render /metrics")
            return _response("500 Internal Server Error", b"see the master's log\n", "text/plain")
        return _response("200 OK", body, CONTENT_TYPE, head=method == b"HEAD")

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(client)
        elif not client.writing:
            client.writing = True
            self.selector.register(client.sock, selectors.EVENT_WRITE,
                                   lambda s, m, c=client: self._write(c))

    def _expire(self, now: float) -> None:
        """Drop clients that have had READ_TIMEOUT to send their request and take the answer
        (looked at when the next scraper connects: until then they hold only a socket)."""
        for client in [c for c in self.clients.values() if now >= c.deadline]:
            self._close(client)

    def _close(self, client: _Client) -> None:
        self.clients.pop(client.sock, None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


class MetricsError(Exception):
    """The metrics address cannot be bound; the message is one line for the user."""


class _Client:
    __slots__ = ("sock", "deadline", "head", "out", "writing")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.head = bytearray()
        self.out = b""
        self.writing = False


def _response(status: str, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    header = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return header + (b"" if head else body)
