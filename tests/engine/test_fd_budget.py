"""The connection cap a worker keeps under its descriptor limit: which connections it sheds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from wsgiref.validate import validator

import pytest

import flask_cluster.worker.fd_budget
from flask_cluster.worker.fd_budget import FdBudget, reserve_for
from tests.engine.harness import AppState, Server, build, make_app, wait_for

QUIET = 0.3


def still_open(sock: socket.socket) -> bool:
    """The server has neither closed ``sock`` nor written to it: a read would block."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)
    return False


def test_shedding_takes_kept_alive_connections_first_then_quiet_ones_never_busy_ones(
        make_server: Callable[..., Server], state: AppState,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a pool, so that a request can be busy while the loop answers the test."""
    monkeypatch.setattr(flask_cluster.worker.fd_budget, "QUIET", QUIET)
    server = make_server(validator(make_app(state)), threads=4)
    budget = server.call(lambda: FdBudget(server.engine, 4, max_connections=100))
    budget.cap = 5  # as if the descriptor limit allowed five connections
    with server.client() as kept_first, server.client() as kept_second, \
            server.client() as silent, server.client() as busy:
        assert kept_first.request().status == 200
        assert kept_second.request().status == 200
        busy.send(build("GET", "/wait"))  # in the app until released
        wait_for(state.started.is_set, what="the busy request to start")
        wait_for(lambda: len(server.connections()) == 4, what="four connections")
        silent_since = time.monotonic()
        wait_for(lambda: time.monotonic() - silent_since > QUIET, what="the quiet time")
        young = server.client()  # has not sent its first request yet: left to send it
        wait_for(lambda: len(server.connections()) == 5, what="five connections")

        assert server.call(lambda: budget.make_room(1))  # the oldest kept-alive one
        assert kept_first.closed_by_server()
        assert still_open(kept_second.sock) and still_open(silent.sock)

        assert server.call(lambda: budget.make_room(2))  # the other kept-alive one
        assert kept_second.closed_by_server()
        assert still_open(silent.sock) and still_open(busy.sock) and still_open(young.sock)

        assert server.call(lambda: budget.make_room(3))  # the silent one, quiet long enough
        assert silent.closed_by_server()

        assert not server.call(lambda: budget.make_room(4))  # busy and young stay
        assert still_open(busy.sock) and still_open(young.sock)
        state.release.set()
        assert busy.response().status == 200
        young.sock.close()


def test_the_reserve_grows_with_the_threads_and_the_limit() -> None:
    assert reserve_for(64, 1) == 10
    assert reserve_for(64, 8) == 24
    assert reserve_for(1024, 1) == 64
    assert reserve_for(1 << 20, 4) == 65536
