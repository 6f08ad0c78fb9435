"""The iterable's close(), whether the response completes or the client leaves."""

from __future__ import annotations

import socket

from flask_cluster.worker.connection import HIGH_WATER
from tests.engine.harness import AppState, Server, build, wait_for


def test_close_is_called_after_a_complete_response(server: Server, state: AppState) -> None:
    with server.client() as client:
        assert client.request("GET", "/tracked?chunks=3&size=4").body == b"AAAABBBBCCCC"

    wait_for(lambda: state.closed == [3], what="close() of the iterable")


def test_close_is_called_when_the_client_disconnects_mid_response(server: Server,
                                                                  state: AppState) -> None:
    client = server.client()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    client.send(build("GET", "/tracked?chunks=2000&size=65536"))  # 128 MiB: far beyond any buffer
    client.head()
    wait_for(lambda: state.produced > 0, what="the response to start")
    client.reset()

    wait_for(lambda: state.closed == [2000], what="close() after the disconnect")
    assert state.produced < 2000  # production stopped: nobody reads
    wait_for(lambda: not server.connections(), what="the connection to be forgotten")


def test_in_flight_count_returns_to_zero_after_a_disconnect(server: Server, state: AppState) -> None:
    client = server.client()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    client.send(build("GET", "/tracked?chunks=2000&size=65536"))
    client.head()
    client.reset()
    wait_for(lambda: state.closed, what="close() after the disconnect")

    wait_for(lambda: not server.connections(), what="the connection to be forgotten")
    assert server.in_flight == 0


def test_slow_reader_is_not_buffered_whole(server: Server, state: AppState) -> None:
    """The loop stops producing while the client does not read, and resumes on writability."""
    chunks, size = 640, 64 * 1024  # 40 MiB
    with server.client(timeout=10) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.send(build("GET", f"/tracked?chunks={chunks}&size={size}"))

        def blocked_on_the_client() -> bool:  # runs on the loop thread
            [conn] = server.engine.connections
            return conn.want_write and conn.current is not None

        wait_for(lambda: server.call(blocked_on_the_client), what="the engine to wait for the client")
        produced = state.produced
        assert produced * size < 12 * 1024 * 1024  # socket buffers + HIGH_WATER, not the body
        [conn] = server.connections()
        assert conn.out_size <= 2 * HIGH_WATER + 2 * size

        reply = client.response()

    assert len(reply.body) == chunks * size
    assert reply.body[:size] == b"A" * size and reply.body[-size:] == bytes([65 + (chunks - 1) % 26]) * size
    assert state.produced == chunks
    wait_for(lambda: state.closed == [chunks], what="close() of the iterable")
