"""Timeouts (idle, slowloris, stalled body) and the connection limit."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from wsgiref.validate import validator

import pytest

from tests.engine.harness import TIMEOUT, AppState, Client, Server, build, make_app


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
