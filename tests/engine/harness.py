"""The worker's HTTP engine, in process: an :class:`Engine` loop on a background thread, a
loopback listener, real client sockets, and WSGI apps checked by ``wsgiref.validate``.

Every wait is a poll with a deadline or a socket timeout; every server is stopped (and its thread
joined) by the fixture that made it (conftest.py).
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest

from flask_cluster.http.parser import Limits
from flask_cluster.http.wsgi import base_environ
from flask_cluster.worker.access_log import AccessLog
from flask_cluster.worker.connection import Connection
from flask_cluster.worker.engine import Engine

T = TypeVar("T")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
TIMEOUT = 5.0


def wait_for(predicate: Callable[[], T], timeout: float = TIMEOUT, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Server:
    """An :class:`Engine` serving ``app`` on a loopback port from a background thread.

    The loop thread owns the engine, so :meth:`call` runs a function on it (through a
    socketpair the loop reads) and returns its result.
    """

    def __init__(self, app: WSGIApp, *, threads: int = 1, keep_alive: float = 5.0,
                 limits: Limits | None = None, access_log: AccessLog | None = None,
                 **engine_options: Any) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.in_flight = 0
        self.started = 0
        self.engine = Engine(
            app, threads=threads, keep_alive=keep_alive, limits=limits or Limits(),
            base_environ=base_environ("127.0.0.1", str(self.port), scheme="http",
                                      multithread=threads > 1),
            access_log=access_log, on_request=self._on_request, **engine_options)
        self.engine.accept_from(self.listener)
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.engine.add_reader(self._wake_r, self._run_calls)
        self.crashed: BaseException | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.thread.start()

    def _on_request(self, delta: int) -> None:
        self.in_flight += delta
        if delta > 0:
            self.started += 1

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop() and the tests
            self.crashed = exc

    def _run_calls(self) -> None:
        self._wake_r.recv(4096)
        while True:
            try:
                function, future = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def call(self, function: Callable[[], T], timeout: float = TIMEOUT) -> T:
        """Run ``function`` on the loop thread."""
        future: Future[T] = Future()
        self._calls.put((function, future))
        self._wake_w.send(b"\0")
        return future.result(timeout)

    def connections(self) -> list[Connection]:
        return self.call(lambda: list(self.engine.connections))

    def begin_stop(self, graceful: float) -> None:
        def begin() -> None:
            self.engine.remove_reader(self.listener)
            self.engine.begin_stop(graceful)

        self.call(begin)

    def stop(self, graceful: float = 2.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.thread.is_alive() and not self.engine.stopping:
                self.begin_stop(graceful)
            self.thread.join(graceful + TIMEOUT)
            assert not self.thread.is_alive(), "the engine loop did not stop"
            self.engine.close()
            if self.crashed is not None:
                trace = "".join(traceback.format_exception(self.crashed))
                pytest.fail(f"the engine loop crashed:\n{trace}")
        finally:
            # Engine.close() leaves the pool's wake-up pair open (see test_close_releases_its_fds).
            engine_pair = [getattr(self.engine, name, None) for name in ("_wake_r", "_wake_w")]
            for sock in (self.listener, self._wake_r, self._wake_w, *engine_pair):
                if sock is not None:
                    sock.close()

    def client(self, timeout: float = TIMEOUT) -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None
@dataclass
class Client:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    trailers: list[bytes] = field(default_factory=list)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", path: str = "/", body: bytes | None = None,
                headers: str = "") -> Reply:
        self.send(build(method, path, body, headers))
        return self.response(method)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread: {bytes(self.buffer[:200])!r}")
        self.buffer += data

    def _until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            self._fill()
        data = bytes(self.buffer[:end])
        del self.buffer[:end + len(separator)]
        return data

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def head(self) -> Reply:
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        assert version == "HTTP/1.1", lines[0]
        headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:])]
        return Reply(int(status), reason, headers)

    def response(self, method: str = "GET") -> Reply:
        """The next final response; fails on an unexpected interim one."""
        reply = self.head()
        assert reply.status >= 200, f"unexpected interim response {reply.status}"
        if method == "HEAD" or reply.status in (204, 304):
            return reply
        if reply.header("Transfer-Encoding") == "chunked":
            parts = []
            while size := int(self._until(b"\r\n").split(b";")[0], 16):
                parts.append(self._exactly(size))
                assert self._exactly(2) == b"\r\n"
            while line := self._until(b"\r\n"):
                self.trailers.append(line)
            reply.body = b"".join(parts)
        elif (length := reply.header("Content-Length")) is not None:
            reply.body = self._exactly(int(length))
        else:
            reply.body = self.read_to_end()
        return reply

    def read_to_end(self) -> bytes:
        """Everything until the server closes (or resets) the connection."""
        while True:
            try:
                self._fill()
            except (EOFError, ConnectionResetError):
                data = bytes(self.buffer)
                self.buffer.clear()
                return data

    def closed_by_server(self) -> bool:
        """True once the server closed the connection; fails on unexpected bytes."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        assert not data, f"unexpected bytes {data[:200]!r}"
        return True

    def reset(self) -> None:
        """Vanish: close with RST, as a client that crashed."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
def build(method: str = "GET", path: str = "/", body: bytes | None = None, headers: str = "") -> bytes:
    lines = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}"
    if body is not None:
        lines += f"Content-Length: {len(body)}\r\n"
    return (lines + "\r\n").encode("latin-1") + (body or b"")


class Tracked:
    """A response iterable that records its ``close()`` and how far it was iterated."""

    def __init__(self, state: AppState, chunks: int, size: int) -> None:
        self.state = state
        self.chunks = chunks
        self.size = size

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.chunks):
            self.state.produced += 1
            yield bytes([65 + i % 26]) * self.size

    def close(self) -> None:
        self.state.closed.append(self.chunks)


@dataclass
class AppState:
    closed: list[int] = field(default_factory=list)
    produced: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    barrier: threading.Barrier = field(default_factory=lambda: threading.Barrier(4, timeout=TIMEOUT))
    inputs: list[Any] = field(default_factory=list)
def make_app(state: AppState) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        query = {key: values[0] for key, values in parse_qs(environ["QUERY_STRING"]).items()}
        text = [("Content-Type", "text/plain")]
        if path == "/echo":
            stream = environ["wsgi.input"]
            state.inputs.append(getattr(stream, "input", stream))  # under wsgiref's InputWrapper
            body = b"".join(iter(lambda: stream.read(65536), b""))
            start_response("200 OK", [*text, ("Content-Length", str(len(body)))])
            return [body]
        if path == "/info":
            keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
                    "REMOTE_ADDR", "SERVER_PORT", "HTTP_X_TAG")
            start_response("200 OK", text)
            return ["\n".join(f"{key}={environ.get(key, '')}" for key in keys).encode()]
        if path == "/chunks":
            start_response("200 OK", text)
            return iter([b"one", b"two", b"three"])
        if path == "/write":
            write = start_response("200 OK", text)
            write(b"legacy ")
            write(b"write, ")
            return [b"then iterable"]
        if path == "/tracked":
            start_response("200 OK", text)
            return Tracked(state, int(query.get("chunks", "3")), int(query.get("size", "10")))
        if path == "/error":
            raise RuntimeError("secret-internal-detail")
        if path == "/error-after-headers":
            start_response("200 OK", text)

            def failing() -> Iterator[bytes]:
                yield b"partial"
                yield b"more"
                raise RuntimeError("mid-body failure")

            return failing()
        if path == "/stream-wait":  # its second chunk comes when the test releases it
            start_response("200 OK", text)

            def waiting() -> Iterator[bytes]:
                yield b"first"
                state.release.wait(TIMEOUT)
                state.produced += 1  # the wait is over (released or timed out)
                yield b"second"

            return waiting()
        if path == "/wait":  # until the test releases it
            state.started.set()
            state.release.wait(TIMEOUT)
            start_response("200 OK", text)
            return [b"released"]
        if path == "/together":  # only completes when four requests run at once
            state.barrier.wait()
            start_response("200 OK", text)
            return [b"together"]
        start_response("200 OK", text)
        return [b"hello"]

    return app
