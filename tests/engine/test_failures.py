"""An app or a request that fails: a 500 or a 4xx, and the loop lives on."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

import pytest

from flask_cluster.http.parser import Limits
from tests.engine.harness import AppState, Server, WSGIApp, build, make_app, wait_for


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


def test_an_error_in_a_reader_or_a_tick_is_logged_and_the_loop_serves_on(
        make_server: Callable[..., Server], state: AppState, fast_tick: None,
        caplog: pytest.LogCaptureFixture) -> None:
    """Regression: at the descriptor limit, the heartbeat's EMFILE left the loop and the worker
    died with every connection it held. Whatever a reader or a tick raises is logged instead."""
    server = make_server(validator(make_app(state)))
    ticks: list[float] = []

    def tick(now: float) -> None:
        ticks.append(now)
        raise OSError(24, "Too many open files")

    theirs, ours = socket.socketpair()

    def reader() -> None:
        ours.recv(1)
        raise OSError(24, "Too many open files")

    with caplog.at_level(logging.ERROR, logger="flask_cluster.worker"), theirs, ours:
        server.call(lambda: server.engine.tick_callbacks.append(tick))
        server.call(lambda: server.engine.add_reader(ours, reader))
        theirs.send(b"x")
        wait_for(lambda: len(ticks) >= 2, what="two ticks")

        with server.client() as client:
            assert client.request("GET", "/").status == 200
        server.call(lambda: server.engine.remove_reader(ours))
    messages = [record.getMessage() for record in caplog.records]
    assert "error in the worker's loop" in messages
    assert "error in the worker's housekeeping" in messages
