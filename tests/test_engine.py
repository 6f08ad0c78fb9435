"""The worker's HTTP engine, in process: an :class:`Engine` loop on a background thread, a
loopback listener, real client sockets, and WSGI apps checked by ``wsgiref.validate``.

Every wait is a poll with a deadline or a socket timeout; every server is stopped (and its thread
joined) by the fixture that made it.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs
from wsgiref.validate import validator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flask_cluster.worker.connection
import flask_cluster.worker.engine
from flask_cluster.http.errors import HTTPError
from flask_cluster.http.parser import Limits, RequestParser
from flask_cluster.http.wsgi import base_environ
from flask_cluster.worker.access_log import AccessLog
from flask_cluster.worker.connection import HIGH_WATER, Connection
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


# -- the server ---------------------------------------------------------------------------------


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


# -- the app ------------------------------------------------------------------------------------


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


@pytest.fixture
def fast_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Housekeeping (timeouts) every 0.1 s instead of every second, so timeout tests are quick."""
    monkeypatch.setattr(flask_cluster.worker.engine, "TICK", 0.1)


@pytest.fixture
def state() -> AppState:
    return AppState()


@pytest.fixture
def make_server(state: AppState) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(app: WSGIApp, **options: Any) -> Server:
        server = Server(app, **options)
        servers.append(server)
        return server

    yield make
    state.release.set()  # no app thread may wait for a test that has ended
    for server in servers:
        server.stop()


@pytest.fixture(params=[1, 4], ids=["inline", "threads4"])
def threads(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def server(make_server: Callable[..., Server], state: AppState, threads: int) -> Server:
    return make_server(validator(make_app(state)), threads=threads)


# -- requests and responses ---------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    with server.client() as client:
        for i in range(20):
            reply = client.request("GET", f"/info?i={i}")
            assert reply.status == 200
            assert f"QUERY_STRING=i={i}".encode() in reply.body
            assert reply.header("Connection") is None
    wait_for(lambda: server.in_flight == 0 and server.started == 20, what="request accounting")


def test_environ_seen_by_the_app(server: Server) -> None:
    with server.client() as client:
        reply = client.request("GET", "/info?a=1", headers="X-Tag: t1\r\n")

    fields = dict(line.split("=", 1) for line in reply.body.decode().splitlines())
    assert fields["REQUEST_METHOD"] == "GET"
    assert fields["PATH_INFO"] == "/info"
    assert fields["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert fields["REMOTE_ADDR"] == "127.0.0.1"
    assert fields["SERVER_PORT"] == str(server.port)
    assert fields["HTTP_X_TAG"] == "t1"


def test_pipelined_responses_come_in_order(server: Server) -> None:
    with server.client() as client:
        client.send(build("GET", "/info?n=1") + build("POST", "/echo", b"second")
                    + build("GET", "/chunks") + build("HEAD", "/") + build("GET", "/info?n=5"))

        assert b"QUERY_STRING=n=1" in client.response().body
        assert client.response().body == b"second"
        assert client.response().body == b"onetwothree"
        assert client.response("HEAD").header("Transfer-Encoding") is None
        assert b"QUERY_STRING=n=5" in client.response().body


def test_pipelined_requests_after_connection_close_are_not_answered(server: Server) -> None:
    with server.client() as client:
        client.send(build("GET", "/", headers="Connection: close\r\n") + build("GET", "/info"))

        reply = client.response()
        assert reply.header("Connection") == "close"
        assert client.read_to_end() == b""


def test_chunked_request_body(server: Server) -> None:
    body = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(part), part)
                    for part in (b"hello ", b"chunked ", b"world")) + b"0\r\nX-Trailer: 1\r\n\r\n"
    with server.client() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 7):
            client.send(body[i:i + 7])
        assert client.response().body == b"hello chunked world"
        assert client.request("GET", "/").body == b"hello"  # the connection is still in step


def test_large_upload_is_spooled_and_delivered(make_server: Callable[..., Server],
                                               state: AppState) -> None:
    server = make_server(validator(make_app(state)), limits=Limits(spool_threshold=64 * 1024))
    payload = os.urandom(3 * 1024 * 1024)
    try:
        with server.client() as client:
            client.send(build("POST", "/echo", payload))
            assert client.response().body == payload
    finally:
        for stream in state.inputs:
            stream.close()


def test_spooled_request_body_is_closed_after_the_request(make_server: Callable[..., Server],
                                                          state: AppState) -> None:
    server = make_server(validator(make_app(state)), limits=Limits(spool_threshold=1024))
    try:
        with server.client() as client:
            assert client.request("POST", "/echo", b"x" * 4096).status == 200
        [stream] = state.inputs
        assert stream.closed
    finally:
        for stream in state.inputs:
            stream.close()


def test_chunked_response(server: Server) -> None:
    with server.client() as client:
        reply = client.request("GET", "/chunks")

        assert reply.header("Transfer-Encoding") == "chunked"
        assert reply.body == b"onetwothree"
        assert client.request("GET", "/").status == 200


def test_http10_streamed_response_is_close_delimited(server: Server) -> None:
    with server.client() as client:
        client.send(b"GET /chunks HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = client.head()

        assert reply.header("Connection") == "close"
        assert reply.header("Transfer-Encoding") is None
        assert client.read_to_end() == b"onetwothree"


def test_expect_100_continue(server: Server) -> None:
    with server.client() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 7\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        interim = client.head()
        assert (interim.status, interim.reason) == (100, "Continue")

        client.send(b"payload")
        assert client.response().body == b"payload"


def test_expect_100_continue_not_sent_when_the_body_came_along(server: Server) -> None:
    with server.client() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 7\r\n"
                    b"Expect: 100-continue\r\n\r\npayload")

        reply = client.response()
        assert reply.body == b"payload"


def test_head_has_no_body(server: Server) -> None:
    with server.client() as client:
        reply = client.request("HEAD", "/")

        assert reply.status == 200
        assert reply.header("Transfer-Encoding") is None
        # The next response starts right away: no body bytes were sent after the HEAD headers.
        assert client.request("GET", "/").body == b"hello"


def _list_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]  # bare: wsgiref's validator would hide that this is a list


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_one_item_list_gets_a_content_length(make_server: Callable[..., Server], threads: int,
                                               method: str) -> None:
    server = make_server(_list_app, threads=threads)
    with server.client() as client:
        reply = client.request(method, "/")

        assert reply.header("Content-Length") == "5"
        assert reply.header("Transfer-Encoding") is None
        assert client.request("GET", "/").body == b"hello"


def test_a_streamed_chunk_arrives_while_the_app_waits(server: Server, state: AppState) -> None:
    with server.client() as client:
        client.send(build("GET", "/stream-wait"))
        reply = client.head()
        assert reply.header("Transfer-Encoding") == "chunked"
        assert client._exactly(10) == b"5\r\nfirst\r\n"
        assert state.produced == 0  # the generator is still waiting

        state.release.set()
        assert client._exactly(16) == b"6\r\nsecond\r\n0\r\n\r\n"
        assert client.request("GET", "/").body == b"hello"


def test_write_callable(server: Server) -> None:
    with server.client() as client:
        assert client.request("GET", "/write").body == b"legacy write, then iterable"


@pytest.fixture
def access_logger(monkeypatch: pytest.MonkeyPatch) -> logging.Logger:
    """The access logger as a fresh process has it; restored afterwards."""
    logger = logging.getLogger("flask_cluster.access")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    return logger


@pytest.mark.usefixtures("access_logger")
def test_access_log_writes_one_line_per_request(make_server: Callable[..., Server], state: AppState,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    access_log = AccessLog()  # writes to stderr from a thread of its own
    server = make_server(validator(make_app(state)), access_log=access_log)
    with server.client() as client:
        client.request("GET", "/info?q=1")
        client.request("POST", "/echo", b"abc")
    server.stop()  # Engine.close() flushes the access log

    first, second = [line for line in capfd.readouterr().err.splitlines() if '" 200 ' in line]
    assert first.startswith("127.0.0.1 - - [")
    assert '"GET /info?q=1 HTTP/1.1" 200' in first
    assert second.endswith('"POST /echo HTTP/1.1" 200 3')


@pytest.mark.usefixtures("access_logger")
def test_access_log_close_twice() -> None:
    access_log = AccessLog()

    access_log.close()
    access_log.close()  # Engine.close(), then atexit


class _Sent:
    status_code = 200
    body_bytes = 5


@pytest.mark.usefixtures("access_logger")
def test_a_second_access_log_still_writes(capfd: pytest.CaptureFixture[str]) -> None:
    environ = {"REMOTE_ADDR": "192.0.2.1", "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"}
    first = AccessLog()
    first.write({**environ, "RAW_URI": "/first"}, _Sent())  # type: ignore[arg-type]
    first.close()

    second = AccessLog()  # another engine in the same process (tests, an embedding)
    second.write({**environ, "RAW_URI": "/second"}, _Sent())  # type: ignore[arg-type]
    second.close()

    err = capfd.readouterr().err
    assert '"GET /first HTTP/1.1" 200 5' in err
    assert '"GET /second HTTP/1.1" 200 5' in err


# -- failures -----------------------------------------------------------------------------------


def test_view_exception_gives_500_without_details(server: Server,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="flask_cluster.worker"), server.client() as client:
        reply = client.request("GET", "/error")

        assert reply.status == 500
        assert b"secret-internal-detail" not in reply.body
        assert b"Traceback" not in reply.body
        assert client.request("GET", "/").body == b"hello"  # the same connection still works
    with server.client() as client:
        assert client.request("GET", "/").status == 200
    assert any(record.exc_info and str(record.exc_info[1]) == "secret-internal-detail"
               for record in caplog.records)
    wait_for(lambda: server.in_flight == 0, what="in-flight back to 0")


def test_exception_after_headers_ends_the_connection(server: Server, state: AppState) -> None:
    with server.client() as client:
        client.send(build("GET", "/error-after-headers"))
        reply = client.head()
        assert reply.status == 200
        assert reply.header("Transfer-Encoding") == "chunked"

        rest = client.read_to_end()  # closed without the last chunk: the client sees the failure
        assert b"partial" in rest
        assert not rest.endswith(b"0\r\n\r\n")
    with server.client() as client:
        assert client.request("GET", "/").status == 200


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET / HTTP/1.1\r\nHost : test\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    (b"GET * HTTP/1.1\r\nHost: test\r\n\r\n", 400),
    (b"GET http://a:99999/ HTTP/1.1\r\nHost: test\r\n\r\n", 400),
    (b"GE(T / HTTP/1.1\r\nHost: test\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: test\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X-Header: value\r\n" * 200, 431),
    (b"POST / HTTP/1.1\r\nHost: test\r\nExpect: nonsense\r\n\r\n", 417),
])
def test_malformed_request_gets_an_error_and_close(server: Server, raw: bytes, status: int) -> None:
    with server.client() as client:
        client.send(raw)
        reply = client.response()

        assert reply.status == status
        assert reply.header("Connection") == "close"
        assert client.closed_by_server()
    with server.client() as client:
        assert client.request("GET", "/").status == 200


def test_body_limit_gets_413(make_server: Callable[..., Server], state: AppState) -> None:
    server = make_server(validator(make_app(state)), limits=Limits(max_body=1000))
    with server.client() as client:
        assert client.request("POST", "/echo", b"x" * 1000).status == 200
        client.send(build("POST", "/echo", b"x" * 1001))
        reply = client.response()
        assert reply.status == 413
        assert reply.header("Connection") == "close"
        assert client.closed_by_server()


def test_refused_upload_is_read_by_a_client_still_sending(make_server: Callable[..., Server],
                                                        state: AppState) -> None:
    """RFC 9112 9.6: closing with the client's bytes unread sends a reset that can destroy our
    413 before the client reads it; the server must let it finish sending first."""
    server = make_server(validator(make_app(state)), limits=Limits(max_body=1000))
    with server.client() as client:
        client.send(b"PUT /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%b\r\n" % (64 * 1024, b"u" * 64 * 1024)
        for _ in range(32):  # 2 MiB, long after the refusal
            client.send(chunk)
        client.sock.shutdown(socket.SHUT_WR)

        reply = client.response()
        assert reply.status == 413
        assert reply.header("Connection") == "close"
        assert client.closed_by_server()


def test_good_request_then_malformed_one(server: Server) -> None:
    with server.client() as client:
        client.send(build("GET", "/info?first") + b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")

        assert b"first" in client.response().body
        reply = client.response()
        assert reply.status == 400
        assert client.closed_by_server()


def test_upgrade_request_body_reaches_the_app(server: Server) -> None:
    """We never switch protocols, and may ignore Upgrade (RFC 9110 7.8); Java's RestClient sends
    'Upgrade: h2c' with every POST, so the body must still arrive."""
    with server.client() as client:
        reply = client.request("POST", "/echo", b"hello", headers=(
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"))

    assert reply.body == b"hello"


def _bad_header_app(value: str) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", value)])
        return [b"body"]

    return app


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: admin=1", "\u20ac"])
def test_unsendable_header_gives_500(make_server: Callable[..., Server], threads: int,
                                     value: str) -> None:
    server = make_server(_bad_header_app(value), threads=threads)
    with server.client() as client:
        client.send(build("GET", "/"))
        try:
            reply = client.response()
        finally:
            wait_for(lambda: server.in_flight == 0, what="in-flight back to 0")
        assert reply.status == 500


def test_interim_status_from_the_app_gives_500(make_server: Callable[..., Server],
                                               threads: int) -> None:
    """A 1xx is not a response: sent as one, with its body unframed, the client would wait for
    the real response and misread the body. A 500 instead, and the connection goes on."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/early":
            start_response("103 Early Hints", [("Link", "</style.css>; rel=preload")])
            return [b"not a response"]
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = make_server(app, threads=threads)
    with server.client() as client:
        assert client.request("GET", "/early").status == 500
        reply = client.request("GET", "/")
        assert (reply.status, reply.body) == (200, b"ok")
    assert server.crashed is None


def test_unsendable_header_with_a_file_does_not_kill_the_loop(make_server: Callable[..., Server],
                                                               threads: int, tmp_path: Path) -> None:
    """With threads 1 the headers of a file response are sent on the loop: a refusal there must
    be a 500, not an exception out of the loop (which would end the worker)."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"file body")
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: path.open("rb"), [("X-Name", "\u20ac")]),
                         threads=threads)
    with server.client() as client:
        assert client.request("GET", "/").status == 500
        assert client.request("GET", "/").status == 500  # the loop, and the connection, live on
    wait_for(lambda: len(opened) == 2 and all(f.closed for f in opened), what="close()")
    assert server.crashed is None


# -- close() and disconnects --------------------------------------------------------------------


def test_close_is_called_after_a_complete_response(server: Server, state: AppState) -> None:
    with server.client() as client:
        assert client.request("GET", "/tracked?chunks=3&size=4").body == b"AAAABBBBCCCC"

    wait_for(lambda: state.closed == [3], what="close() of the iterable")


def test_close_is_called_when_the_client_disconnects_mid_response(server: Server,
                                                                  state: AppState) -> None:
    client = server.client()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    client.send(build("GET", "/tracked?chunks=2000&size=65536"))  # 128 MiB: far beyond any buffer
    client.head()
    wait_for(lambda: state.produced > 0, what="the response to start")
    client.reset()

    wait_for(lambda: state.closed == [2000], what="close() after the disconnect")
    assert state.produced < 2000  # production stopped: nobody reads
    wait_for(lambda: not server.connections(), what="the connection to be forgotten")


def test_in_flight_count_returns_to_zero_after_a_disconnect(server: Server, state: AppState) -> None:
    client = server.client()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    client.send(build("GET", "/tracked?chunks=2000&size=65536"))
    client.head()
    client.reset()
    wait_for(lambda: state.closed, what="close() after the disconnect")

    wait_for(lambda: not server.connections(), what="the connection to be forgotten")
    assert server.in_flight == 0


def test_slow_reader_is_not_buffered_whole(server: Server, state: AppState) -> None:
    """The loop stops producing while the client does not read, and resumes on writability."""
    chunks, size = 640, 64 * 1024  # 40 MiB
    with server.client(timeout=10) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.send(build("GET", f"/tracked?chunks={chunks}&size={size}"))

        def blocked_on_the_client() -> bool:  # runs on the loop thread
            [conn] = server.engine.connections
            return conn.want_write and conn.current is not None

        wait_for(lambda: server.call(blocked_on_the_client), what="the engine to wait for the client")
        produced = state.produced
        assert produced * size < 12 * 1024 * 1024  # socket buffers + HIGH_WATER, not the body
        [conn] = server.connections()
        assert conn.out_size <= 2 * HIGH_WATER + 2 * size

        reply = client.response()

    assert len(reply.body) == chunks * size
    assert reply.body[:size] == b"A" * size and reply.body[-size:] == bytes([65 + (chunks - 1) % 26]) * size
    assert state.produced == chunks
    wait_for(lambda: state.closed == [chunks], what="close() of the iterable")


# -- wsgi.file_wrapper --------------------------------------------------------------------------


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(flask_cluster.worker.connection.os, "sendfile", spy)
    return calls


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def _file_app(opened: list[Any], make: Callable[[], Any], headers: list[tuple[str, str]]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        filelike = make()
        opened.append(filelike)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *headers])
        return environ["wsgi.file_wrapper"](filelike)  # type: ignore[no-any-return]

    return app


def test_file_wrapper_with_a_real_file_uses_sendfile(make_server: Callable[..., Server], threads: int,
                                                     data_file: Path, sendfile_calls: list[int]) -> None:
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: data_file.open("rb"), []), threads=threads)
    with server.client() as client:
        reply = client.request("GET", "/")
        assert reply.header("Content-Length") == str(data_file.stat().st_size)
        assert reply.body == data_file.read_bytes()
        assert client.request("HEAD", "/").status == 200
        assert client.request("GET", "/").body == data_file.read_bytes()  # still in step

    assert sendfile_calls
    wait_for(lambda: all(f.closed for f in opened), what="the files to be closed")


def test_file_wrapper_head_announces_the_length_without_reading(
        make_server: Callable[..., Server], data_file: Path) -> None:
    reads: list[int] = []

    class Spied(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return super().read(size)

    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: Spied(data_file), []))
    with server.client() as client:
        reply = client.request("HEAD", "/")
    wait_for(lambda: all(f.closed for f in opened), what="the file to be closed")

    assert reply.header("Content-Length") == str(data_file.stat().st_size)
    assert reads == []


def test_file_wrapper_respects_a_declared_length_and_offset(make_server: Callable[..., Server],
                                                            data_file: Path,
                                                            sendfile_calls: list[int]) -> None:
    def open_at_offset() -> Any:
        handle = data_file.open("rb")
        handle.seek(1000)
        return handle

    opened: list[Any] = []
    server = make_server(_file_app(opened, open_at_offset, [("Content-Length", "5000")]))
    with server.client() as client:
        reply = client.request("GET", "/")
        assert reply.body == data_file.read_bytes()[1000:6000]
        assert client.request("GET", "/").status == 200
    wait_for(lambda: all(f.closed for f in opened), what="the files to be closed")


def test_file_wrapper_with_bytesio_is_iterated(make_server: Callable[..., Server], threads: int,
                                               sendfile_calls: list[int]) -> None:
    payload = os.urandom(200 * 1024)
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: io.BytesIO(payload), []), threads=threads)
    with server.client() as client:
        assert client.request("GET", "/").body == payload
        assert client.request("GET", "/").body == payload

    assert sendfile_calls == []
    wait_for(lambda: len(opened) == 2 and all(f.closed for f in opened), what="close()")


def test_file_wrapper_closed_when_the_client_disconnects(make_server: Callable[..., Server],
                                                         threads: int, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: costs no disk
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: path.open("rb"), []), threads=threads)
    try:
        client = server.client()
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        client.send(build("GET", "/"))
        client.head()
        client.reset()

        wait_for(lambda: not server.connections(), what="the connection to be forgotten")
        wait_for(lambda: opened and opened[0].closed, timeout=1.0, what="the file to be closed")
        assert server.in_flight == 0
    finally:
        for handle in opened:
            handle.close()  # whatever the engine did, no file is left to the garbage collector


# -- threads ------------------------------------------------------------------------------------


def test_a_stream_that_keeps_yielding_is_not_stuck(make_server: Callable[..., Server]) -> None:
    """The stuck clock behind --timeout restarts at each chunk an app thread produces."""
    gates = [threading.Event(), threading.Event()]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for gate in gates:
            yield b"tick"
            gate.wait(TIMEOUT)

    server = make_server(app, threads=4)
    try:
        with server.client() as client:
            client.send(build("GET", "/"))
            client.head()
            assert client._exactly(9) == b"4\r\ntick\r\n"
            first = server.call(server.engine.oldest_busy)
            gates[0].set()
            assert client._exactly(9) == b"4\r\ntick\r\n"
            second = server.call(server.engine.oldest_busy)

            assert first is not None and second is not None
            assert second > first
    finally:
        for gate in gates:
            gate.set()


def test_threads_serve_slow_requests_concurrently(make_server: Callable[..., Server],
                                                  state: AppState) -> None:
    server = make_server(validator(make_app(state)), threads=4)
    clients = [server.client() for _ in range(4)]
    try:
        for client in clients:
            client.send(build("GET", "/together"))
        # Each request waits at a barrier of four: they complete only if all four run at once.
        assert [client.response().body for client in clients] == [b"together"] * 4
    finally:
        for client in clients:
            client.sock.close()


def test_loop_keeps_serving_while_app_threads_are_busy(make_server: Callable[..., Server],
                                                       state: AppState) -> None:
    server = make_server(validator(make_app(state)), threads=4)
    with server.client() as slow, server.client() as fast:
        slow.send(build("GET", "/wait"))
        assert state.started.wait(TIMEOUT)
        assert fast.request("GET", "/").body == b"hello"
        state.release.set()
        assert slow.response().body == b"released"


# -- timeouts and stopping ----------------------------------------------------------------------


@pytest.mark.usefixtures("fast_tick")
def test_idle_keep_alive_connection_is_closed(make_server: Callable[..., Server],
                                              state: AppState) -> None:
    server = make_server(validator(make_app(state)), keep_alive=0.5)
    with server.client() as client:
        assert client.request("GET", "/").status == 200
        done = time.monotonic()

        assert client.closed_by_server()  # blocks until the sweep closes it (socket timeout: 5 s)
        assert time.monotonic() - done >= 0.45


@pytest.mark.usefixtures("fast_tick")
def test_silent_connection_is_closed(make_server: Callable[..., Server], state: AppState) -> None:
    server = make_server(validator(make_app(state)), keep_alive=0.5)
    with server.client() as silent:
        assert silent.closed_by_server()


@pytest.mark.usefixtures("fast_tick")
def test_trickling_headers_get_408(make_server: Callable[..., Server], state: AppState) -> None:
    server = make_server(validator(make_app(state)), keep_alive=60.0, header_timeout=0.5)
    with server.client() as slowloris:
        started = time.monotonic()
        for piece in (b"GET / HTTP/1.1\r\n", b"Host: t\r\n", b"X-A: 1\r\n"):
            slowloris.send(piece)  # bytes keep coming, but the headers never end
            time.sleep(0.15)

        reply = slowloris.response()
        assert reply.status == 408
        assert reply.header("Connection") == "close"
        assert slowloris.closed_by_server()
        assert time.monotonic() - started >= 0.5


@pytest.mark.usefixtures("fast_tick")
def test_stalled_body_is_closed(make_server: Callable[..., Server], state: AppState) -> None:
    server = make_server(validator(make_app(state)), keep_alive=60.0, header_timeout=0.5)
    with server.client() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf")

        assert client.closed_by_server()
    assert state.inputs == []  # the app never saw it


def test_max_connections_leaves_the_rest_in_the_backlog(make_server: Callable[..., Server],
                                                        state: AppState) -> None:
    server = make_server(validator(make_app(state)), max_connections=2)
    with server.client() as first, server.client() as second:
        assert first.request().status == 200
        assert second.request().status == 200
        with server.client(timeout=0.3) as third:
            third.send(build())
            with pytest.raises(TimeoutError):
                third.response()  # accepted by the kernel only: the engine is full
            first.sock.close()
            third.sock.settimeout(TIMEOUT)
            assert third.response().body == b"hello"  # taken up once a slot freed


def test_handed_over_connection_beyond_the_limit_gets_503(make_server: Callable[..., Server],
                                                         state: AppState) -> None:
    server = make_server(validator(make_app(state)), max_connections=1)
    with server.client() as first:
        assert first.request().status == 200
        ours, theirs = socket.socketpair()
        with ours:
            server.call(lambda: server.engine.add_connection(theirs))  # as the master hands over
            ours.settimeout(TIMEOUT)
            client = Client(ours)
            reply = client.response()
            assert reply.status == 503
            assert client.closed_by_server()
        assert first.request().status == 200


def test_forwarded_headers_from_a_trusted_proxy(make_server: Callable[..., Server],
                                                state: AppState) -> None:
    trusted = make_server(validator(make_app(state)), trusted_proxies=frozenset({"127.0.0.1"}))
    untrusted = make_server(validator(make_app(state)), trusted_proxies=frozenset({"10.9.9.9"}))
    forwarded = "X-Forwarded-For: 6.6.6.6, 203.0.113.5\r\nX-Forwarded-Proto: https\r\n"

    with trusted.client() as client:
        body = client.request("GET", "/info", headers=forwarded).body
        assert b"REMOTE_ADDR=203.0.113.5" in body  # the entry our proxy added, not the forged one
    with untrusted.client() as client:
        assert b"REMOTE_ADDR=127.0.0.1" in client.request("GET", "/info", headers=forwarded).body


def test_begin_stop_closes_idle_connections_and_ends_the_loop(make_server: Callable[..., Server],
                                                              state: AppState) -> None:
    server = make_server(validator(make_app(state)))
    with server.client() as client:
        assert client.request("GET", "/").status == 200

        server.begin_stop(5.0)

        assert client.closed_by_server()
    server.thread.join(TIMEOUT)
    assert not server.thread.is_alive()


def test_begin_stop_lets_an_in_flight_request_finish(make_server: Callable[..., Server],
                                                     state: AppState) -> None:
    server = make_server(validator(make_app(state)), threads=4)
    with server.client() as busy, server.client() as idle:
        assert idle.request("GET", "/").status == 200
        busy.send(build("GET", "/wait"))
        assert state.started.wait(TIMEOUT)

        server.begin_stop(5.0)
        assert idle.closed_by_server()  # idle: closed at once
        assert server.thread.is_alive()  # still serving the request in flight
        state.release.set()

        assert busy.response().body == b"released"
        assert busy.closed_by_server()
    server.thread.join(TIMEOUT)
    assert not server.thread.is_alive()


def test_begin_stop_lets_a_streaming_response_finish(make_server: Callable[..., Server],
                                                     state: AppState) -> None:
    server = make_server(validator(make_app(state)))
    chunks, size = 200, 64 * 1024
    with server.client() as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.send(build("GET", f"/tracked?chunks={chunks}&size={size}"))
        reply = client.head()
        server.begin_stop(5.0)

        assert len(client.read_to_end()) > chunks * size  # the whole chunked body, then the close
        assert reply.status == 200
    wait_for(lambda: state.closed == [chunks], what="close() of the iterable")


def test_begin_stop_still_answers_a_connection_whose_request_is_on_the_way(
        make_server: Callable[..., Server], state: AppState) -> None:
    """A connection accepted (or handed over) before the stop has not sent its request yet:
    it is answered, with "Connection: close", not dropped."""
    server = make_server(validator(make_app(state)))
    with server.client() as client:
        wait_for(lambda: server.connections(), what="the connection to be accepted")
        server.begin_stop(5.0)
        client.send(build("GET", "/info"))

        reply = client.response()
        assert reply.status == 200
        assert reply.header("Connection") == "close"
        assert client.closed_by_server()


def test_begin_stop_lets_an_arriving_request_finish(make_server: Callable[..., Server],
                                                    state: AppState) -> None:
    server = make_server(validator(make_app(state)))
    with server.client(timeout=1.0) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhello")
        wait_for(lambda: any(conn.http.in_progress for conn in server.connections()),
                 what="the request to be in progress")
        server.begin_stop(1.5)
        client.send(b"world")

        reply = client.response()
        assert reply.body == b"helloworld"
        assert reply.header("Connection") == "close"


# -- any bytes at all ---------------------------------------------------------------------------


def _due(data: bytes) -> int:
    """The most final responses a peer may get for ``data``: one per complete request, plus one
    error, as our own parser reads it (the connection feeds the same parser)."""
    parser = RequestParser(Limits())
    try:
        parser.feed(data)
    except HTTPError:
        return len(parser.requests) + 1
    return len(parser.requests)


@pytest.fixture(scope="module", params=[1, 4], ids=["inline", "threads4"])
def shared_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    server = Server(validator(make_app(AppState())), threads=int(request.param))
    yield server
    server.stop()


_fragments = st.sampled_from([
    b"GET / HTTP/1.1\r\n", b"POST /echo HTTP/1.1\r\n", b"HEAD / HTTP/1.0\r\n", b"Host: t\r\n",
    b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"\r\n", b"abc", b"3\r\nabc\r\n",
    b"0\r\n\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n",
    b"Upgrade: h2c\r\nConnection: Upgrade\r\n",
]) | st.binary(min_size=1, max_size=24)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parts=st.lists(_fragments, min_size=1, max_size=12))
def test_any_bytes_get_at_most_the_due_responses(shared_server: Server, parts: list[bytes]) -> None:
    data = b"".join(parts)
    with shared_server.client() as client:
        try:
            client.send(data)
            client.sock.shutdown(socket.SHUT_WR)  # end of requests: answer, then close
        except OSError:
            pass  # the server closed first, after an error: read what it said
        received = client.read_to_end()

    finals = received.count(b"HTTP/1.1 ") - received.count(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert finals <= _due(data), received[:500]
    assert shared_server.crashed is None
    with shared_server.client() as client:
        assert client.request("GET", "/").body == b"hello"


# -- resources ----------------------------------------------------------------------------------


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("threads", [1, 4],
    ids=["inline", "threads4"])
def test_close_releases_its_fds(threads: int) -> None:
    before = _open_fds()
    engine = Engine(validator(make_app(AppState())), threads=threads, keep_alive=5.0,
                    limits=Limits(), base_environ=base_environ("h", "1", scheme="http",
                                                               multithread=threads > 1),
                    access_log=None, on_request=lambda delta: None)
    engine.close()
    leaked = _open_fds() - before
    for name in ("_wake_r", "_wake_w"):  # close them anyway, so no ResourceWarning follows
        sock = getattr(engine, name, None)
        if sock is not None:
            sock.close()

    assert not leaked


# -- a lost wake-up, stepped by hand ------------------------------------------------------------


def _drain(sock: socket.socket, into: bytearray, quiet: float = 0.05) -> None:
    """Read until nothing arrives for ``quiet`` seconds: the sender's kernel queue is empty."""
    while select.select([sock], [], [], quiet)[0]:
        data = sock.recv(1 << 20)
        if not data:
            return
        into += data


def test_paused_response_resumes_when_a_flush_drains_everything(state: AppState,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A response paused at the high-water mark resumes on writability; when some other flush
    (serve()'s, after a resume) drains the buffer whole, write interest must stay on, or the
    response stalls for good. A fast client makes that happen at random; here it is forced."""
    chunks, size = 200, 64 * 1024
    engine = Engine(validator(make_app(state)), threads=1, keep_alive=5.0, limits=Limits(),
                    base_environ=base_environ("h", "1", scheme="http", multithread=False),
                    access_log=None, on_request=lambda delta: None)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    # A fixed send buffer (no autotuning) larger than what waits at the high-water mark.
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 400 * 1024)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    received = bytearray()
    serve = Connection.serve

    def serve_after_the_client_read_everything(conn: Connection) -> None:
        if conn.current is not None:  # resumed mid-response: a fast client empties the pipe now
            _drain(client, received)
        serve(conn)

    monkeypatch.setattr(Connection, "serve", serve_after_the_client_read_everything)
    try:
        engine.add_connection(accepted)
        client.sendall(build("GET", f"/tracked?chunks={chunks}&size={size}"))
        last_progress = time.monotonic()
        while not received.endswith(b"\r\n0\r\n\r\n") and time.monotonic() - last_progress < 1.0:
            before = len(received)
            engine.run_once(0.01)
            _drain(client, received, quiet=0.001)
            if len(received) > before:
                last_progress = time.monotonic()

        assert received.endswith(b"\r\n0\r\n\r\n"), f"stalled after {state.produced} chunks"
        assert state.closed == [chunks]
    finally:
        engine.close()
        client.close()
        listener.close()
