"""Requests and responses through the engine: keep-alive, pipelining, bodies both ways."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

import pytest

from flask_cluster.http.parser import Limits
from tests.engine.harness import AppState, Server, build, make_app, wait_for


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
