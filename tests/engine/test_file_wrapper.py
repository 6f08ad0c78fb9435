"""wsgi.file_wrapper: os.sendfile for a regular file, iteration otherwise."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import flask_cluster.worker.connection
from tests.engine.harness import Server, WSGIApp, build, wait_for


def test_unsendable_header_with_a_file_does_not_kill_the_loop(make_server: Callable[..., Server],
                                                               threads: int, tmp_path: Path) -> None:
    """With threads 1 the headers of a file response are sent on the loop: a refusal there must
    be a 500, not an exception out of the loop (which would end the worker)."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"file body")
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: path.open("rb"), [("X-Name", "\u20ac")]),
                         threads=threads)
    with server.client() as client:
        assert client.request("GET", "/").status == 500
        assert client.request("GET", "/").status == 500  # the loop, and the connection, live on
    wait_for(lambda: len(opened) == 2 and all(f.closed for f in opened), what="close()")
    assert server.crashed is None


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(flask_cluster.worker.connection.os, "sendfile", spy)
    return calls


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def _file_app(opened: list[Any], make: Callable[[], Any], headers: list[tuple[str, str]]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        filelike = make()
        opened.append(filelike)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *headers])
        return environ["wsgi.file_wrapper"](filelike)  # type: ignore[no-any-return]

    return app


def test_file_wrapper_with_a_real_file_uses_sendfile(make_server: Callable[..., Server], threads: int,
                                                     data_file: Path, sendfile_calls: list[int]) -> None:
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: data_file.open("rb"), []), threads=threads)
    with server.client() as client:
        reply = client.request("GET", "/")
        assert reply.header("Content-Length") == str(data_file.stat().st_size)
        assert reply.body == data_file.read_bytes()
        assert client.request("HEAD", "/").status == 200
        assert client.request("GET", "/").body == data_file.read_bytes()  # still in step

    assert sendfile_calls
    wait_for(lambda: all(f.closed for f in opened), what="the files to be closed")


def test_file_wrapper_head_announces_the_length_without_reading(
        make_server: Callable[..., Server], data_file: Path) -> None:
    reads: list[int] = []

    class Spied(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return super().read(size)

    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: Spied(data_file), []))
    with server.client() as client:
        reply = client.request("HEAD", "/")
    wait_for(lambda: all(f.closed for f in opened), what="the file to be closed")

    assert reply.header("Content-Length") == str(data_file.stat().st_size)
    assert reads == []


def test_file_wrapper_respects_a_declared_length_and_offset(make_server: Callable[..., Server],
                                                            data_file: Path,
                                                            sendfile_calls: list[int]) -> None:
    def open_at_offset() -> Any:
        handle = data_file.open("rb")
        handle.seek(1000)
        return handle

    opened: list[Any] = []
    server = make_server(_file_app(opened, open_at_offset, [("Content-Length", "5000")]))
    with server.client() as client:
        reply = client.request("GET", "/")
        assert reply.body == data_file.read_bytes()[1000:6000]
        assert client.request("GET", "/").status == 200
    wait_for(lambda: all(f.closed for f in opened), what="the files to be closed")


def test_file_wrapper_with_bytesio_is_iterated(make_server: Callable[..., Server], threads: int,
                                               sendfile_calls: list[int]) -> None:
    payload = os.urandom(200 * 1024)
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: io.BytesIO(payload), []), threads=threads)
    with server.client() as client:
        assert client.request("GET", "/").body == payload
        assert client.request("GET", "/").body == payload

    assert sendfile_calls == []
    wait_for(lambda: len(opened) == 2 and all(f.closed for f in opened), what="close()")


def test_file_wrapper_closed_when_the_client_disconnects(make_server: Callable[..., Server],
                                                         threads: int, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: costs no disk
    opened: list[Any] = []
    server = make_server(_file_app(opened, lambda: path.open("rb"), []), threads=threads)
    try:
        client = server.client()
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        client.send(build("GET", "/"))
        client.head()
        client.reset()

        wait_for(lambda: not server.connections(), what="the connection to be forgotten")
        wait_for(lambda: opened and opened[0].closed, timeout=1.0, what="the file to be closed")
        assert server.in_flight == 0
    finally:
        for handle in opened:
            handle.close()  # whatever the engine did, no file is left to the garbage collector
