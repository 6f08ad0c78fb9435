"""The access log: one line per request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from wsgiref.validate import validator

import pytest

from flask_cluster.worker.access_log import AccessLog
from tests.engine.harness import AppState, Server, make_app


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
