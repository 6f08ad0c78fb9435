"""With the app on the loop, the responses one pass of the loop answers go out together at its
end, not one by one between app calls; a worker whose app has slow views sends each at once
(worker/send_batch.py). With a real engine, real sockets, and passes of the loop run by hand."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from flask_cluster.http.parser import Limits
from flask_cluster.http.wsgi import base_environ
from flask_cluster.scoreboard import Scoreboard
from flask_cluster.worker import send_batch
from flask_cluster.worker.engine import Engine
from flask_cluster.worker.send_batch import LONG, QUIET, WAIT, SendBatch
from flask_cluster.worker.spread import Spread
from tests.engine.harness import build, wait_for

Clients = list[socket.socket]


def waiting_bytes(client: socket.socket) -> bool:
    try:
        return bool(client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


@pytest.fixture
def clients() -> Iterator[Clients]:
    made: Clients = []
    yield made
    for client in made:
        client.close()


def serving(clients: Clients, count: int, app: Any) -> Engine:
    """An inline engine whose request hooks are the worker's (a Spread reads the clock at each
    request's start and end), serving ``count`` kept-alive clients."""
    engine = Engine(app, threads=1, keep_alive=5.0, limits=Limits(),
                    base_environ=base_environ("h", "1", scheme="http", multithread=False),
                    access_log=None, on_request=lambda delta: None)
    spread = Spread(engine, hand_back=None, scoreboard=Scoreboard(1), slot=0)  # type: ignore[arg-type]

    def on_request(delta: int) -> None:  # as worker/process.py wires it
        if delta > 0:
            spread.request_started()
        else:
            spread.request_ended()

    engine.on_request = on_request
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for _ in range(count):
            client = socket.create_connection(listener.getsockname())
            clients.append(client)
            engine.add_connection(listener.accept()[0])
    return engine


def one_pass(engine: Engine, clients: Clients, paths: list[str]) -> None:
    """Every client in ``clients`` asks for its path; once every request has reached the
    engine's side, the loop runs one pass, which reads them all."""
    for client, path in zip(clients, paths, strict=True):
        client.sendall(build("GET", path))
    ports = {str(client.getsockname()[1]) for client in clients}
    asked = [conn.sock for conn in engine.connections if conn.remote_port in ports]
    assert len(asked) == len(clients)
    wait_for(lambda: len(select.select(asked, [], [], 0)[0]) == len(asked),
             what="the requests to reach the engine's sockets")
    engine.run_once(1.0)


def recording_app(clients: Clients, seen: list[list[bool]]) -> Callable[..., Iterable[bytes]]:
    """Records, at each call, which clients already have response bytes to read; ``/slow``
    holds the loop twice :data:`LONG`."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append([waiting_bytes(client) for client in clients])
        if environ["PATH_INFO"] == "/slow":
            time.sleep(2 * LONG)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


def test_the_responses_of_one_pass_go_out_after_its_last_app_call(clients: Clients) -> None:
    seen: list[list[bool]] = []
    engine = serving(clients, 3, recording_app(clients, seen))
    try:
        one_pass(engine, clients, ["/", "/", "/"])

        assert seen == [[False] * 3] * 3  # no response sent while the pass was calling the app
        assert all(waiting_bytes(client) for client in clients)  # all of them after it
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        engine.close()


def test_after_a_slow_request_each_response_goes_out_at_once(
        clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_batch, "QUIET", 60.0)  # however slow this machine is between passes
    seen: list[list[bool]] = []
    engine = serving(clients, 3, recording_app(clients, seen))
    try:
        one_pass(engine, clients[:1], ["/slow"])
        assert waiting_bytes(clients[0])  # a slow request's own response is not held
        clients[0].recv(4096)
        seen.clear()

        one_pass(engine, clients[1:], ["/", "/"])

        assert seen[1][1]  # the first fast response was sent before the second app call
        assert all(waiting_bytes(client) for client in clients[1:])
    finally:
        engine.close()


def test_a_connection_that_closes_is_answered_at_once(clients: Clients) -> None:
    """Holding a closing response did not pay (Connection: close, 0.95x): its client opens a
    new connection, which one response at a time serves as well."""
    seen: list[list[bool]] = []
    engine = serving(clients, 2, recording_app(clients, seen))
    try:
        clients[0].sendall(build("GET", "/", headers="Connection: close\r\n"))
        one_pass(engine, clients[1:], ["/"])

        assert seen[1][0]
        assert clients[0].recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        engine.close()


# -- the rules, with connections played by the test -----------------------------------------

def fake_connection(sent: list[object], *, read_at: float = 100.0, out: bool = True,
                    closing: bool = False, busy: bool = False, crash: bool = False) -> Any:
    conn = SimpleNamespace(out=[b"response"] if out else [], current=object() if busy else None,
                           file=None, last_active=read_at, http=SimpleNamespace(closing=closing))

    def flush() -> None:
        if crash:
            raise RuntimeError("a bug of ours")
        sent.append(conn)

    conn.flush = flush
    conn.crashed = lambda: sent.append(("crashed", conn))
    return conn


def test_only_whole_responses_of_a_pass_are_held() -> None:
    batch, sent = SendBatch(), []
    assert not batch.hold(fake_connection(sent))  # outside a pass: sent by the caller at once
    batch.begin()
    assert not batch.hold(fake_connection(sent, out=False))
    assert not batch.hold(fake_connection(sent, busy=True))  # a response in progress
    assert not batch.hold(fake_connection(sent, closing=True))
    held = [fake_connection(sent), fake_connection(sent)]
    assert all(batch.hold(conn) for conn in held)
    assert sent == []

    batch.end()

    assert sent == held
    assert not batch.hold(fake_connection(sent))


def test_a_held_response_waits_at_most_wait_for_the_requests_after_it() -> None:
    batch, sent = SendBatch(), []
    batch.begin()
    first = fake_connection(sent, read_at=100.0)
    batch.hold(first)

    batch.before_request(100.0 + WAIT / 2)
    assert sent == []
    batch.before_request(100.0 + WAIT)
    assert sent == [first]


def test_a_long_request_sends_what_waits_and_stops_holding_for_quiet() -> None:
    batch, sent = SendBatch(), []
    batch.begin()
    waiting = fake_connection(sent, read_at=100.0)
    batch.hold(waiting)

    batch.request_ended(LONG / 2, 100.001)
    assert sent == []
    batch.request_ended(LONG, 100.002)
    assert sent == [waiting]

    assert not batch.hold(fake_connection(sent, read_at=100.002 + QUIET / 2))
    assert batch.hold(fake_connection(sent, read_at=100.002 + QUIET))


def test_a_flush_that_fails_ends_its_connection_only() -> None:
    batch, sent = SendBatch(), []
    batch.begin()
    broken, fine = fake_connection(sent, crash=True), fake_connection(sent)
    batch.hold(broken)
    batch.hold(fine)

    batch.end()

    assert sent == [("crashed", broken), fine]

