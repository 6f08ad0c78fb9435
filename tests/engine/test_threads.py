"""The app on a thread pool while the loop keeps serving."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

from tests.engine.harness import TIMEOUT, AppState, Server, build, make_app


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
