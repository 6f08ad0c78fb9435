"""Fixtures of the engine tests: the servers a test made are stopped when it ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

import flask_cluster.worker.engine
from tests.engine.harness import AppState, Server, WSGIApp, make_app


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
