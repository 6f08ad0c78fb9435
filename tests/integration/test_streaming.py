"""Streamed responses reach the client as the app yields them, with the default settings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ..conftest import StartCluster, read_until_close, wait_until

APP = "tests.apps.streaming:create_app"
FIRST = b"data: first\n\n"


def request(cluster_port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", cluster_port), timeout=15.0)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Bytes until ``marker`` has arrived; the socket's timeout bounds each wait."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}; got {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("threads", ["1", "4"])
def test_first_chunk_arrives_while_the_generator_waits(start_cluster: StartCluster,
                                                       tmp_path: Path, threads: str) -> None:
    cluster = start_cluster(APP, "--threads", threads)
    gate = tmp_path / "gate"
    with request(cluster.port, f"/events?gate={gate}") as sock:
        head = read_until(sock, FIRST)  # the generator cannot go on until the gate exists
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Transfer-Encoding: chunked\r\n" in head
        assert not gate.exists()

        gate.touch()
        rest = read_until(sock, b"0\r\n\r\n")
        assert b"data: second" in rest
        assert rest.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("threads", ["1", "4"])
def test_exception_after_the_first_chunk_truncates(start_cluster: StartCluster,
                                                   threads: str) -> None:
    cluster = start_cluster(APP, "--threads", threads)
    with request(cluster.port, "/fails-midway") as sock:
        data, end = read_until_close(sock)

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    assert b"Connection: keep-alive" not in head
    assert FIRST in body
    assert not body.endswith(b"0\r\n\r\n")  # no last chunk: the client knows the body is cut
    assert end == "close"
    wait_until(lambda: "stream broke after its first chunk" in cluster.log(), 10.0,
               message="the exception in the log")
    assert cluster.log().count("RuntimeError: stream broke after its first chunk") == 1
    assert cluster.request("/events?gate=/").status == 200  # the worker goes on
