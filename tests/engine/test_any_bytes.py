"""Any bytes at all from a client get at most the responses due, and the worker lives on."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from wsgiref.validate import validator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_cluster.http.errors import HTTPError
from flask_cluster.http.parser import Limits, RequestParser
from tests.engine.harness import AppState, Server, make_app


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
