"""A graceful stop: idle connections close, requests in flight or on the way finish."""

from __future__ import annotations

import socket
from collections.abc import Callable
from wsgiref.validate import validator

from tests.engine.harness import TIMEOUT, AppState, Server, build, make_app, wait_for


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
