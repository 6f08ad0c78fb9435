"""The loop itself: its descriptors, and a lost wake-up stepped by hand."""

from __future__ import annotations

import os
import select
import socket
import time
from wsgiref.validate import validator

import pytest

from flask_cluster.http.parser import Limits
from flask_cluster.http.wsgi import base_environ
from flask_cluster.worker.connection import Connection
from flask_cluster.worker.engine import Engine
from tests.engine.harness import AppState, build, make_app


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("threads", [1, 4],
    ids=["inline", "threads4"])
def test_close_releases_its_fds(threads: int) -> None:
    before = _open_fds()
    engine = Engine(validator(make_app(AppState())), threads=threads, keep_alive=5.0,
                    limits=Limits(), base_environ=base_environ("h", "1", scheme="http",
                                                               multithread=threads > 1),
                    access_log=None, on_request=lambda delta: None)
    engine.close()
    leaked = _open_fds() - before
    for name in ("_wake_r", "_wake_w"):  # close them anyway, so no ResourceWarning follows
        sock = getattr(engine, name, None)
        if sock is not None:
            sock.close()

    assert not leaked


def _drain(sock: socket.socket, into: bytearray, quiet: float = 0.05) -> None:
    """Read until nothing arrives for ``quiet`` seconds: the sender's kernel queue is empty."""
    while select.select([sock], [], [], quiet)[0]:
        data = sock.recv(1 << 20)
        if not data:
            return
        into += data


def test_paused_response_resumes_when_a_flush_drains_everything(state: AppState,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A response paused at the high-water mark resumes on writability; when some other flush
    (serve()'s, after a resume) drains the buffer whole, write interest must stay on, or the
    response stalls for good. A fast client makes that happen at random; here it is forced."""
    chunks, size = 200, 64 * 1024
    engine = Engine(validator(make_app(state)), threads=1, keep_alive=5.0, limits=Limits(),
                    base_environ=base_environ("h", "1", scheme="http", multithread=False),
                    access_log=None, on_request=lambda delta: None)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    # A fixed send buffer (no autotuning) larger than what waits at the high-water mark.
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 400 * 1024)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    received = bytearray()
    serve = Connection.serve

    def serve_after_the_client_read_everything(conn: Connection) -> None:
        if conn.current is not None:  # resumed mid-response: a fast client empties the pipe now
            _drain(client, received)
        serve(conn)

    monkeypatch.setattr(Connection, "serve", serve_after_the_client_read_everything)
    try:
        engine.add_connection(accepted)
        client.sendall(build("GET", f"/tracked?chunks={chunks}&size={size}"))
        last_progress = time.monotonic()
        while not received.endswith(b"\r\n0\r\n\r\n") and time.monotonic() - last_progress < 1.0:
            before = len(received)
            engine.run_once(0.01)
            _drain(client, received, quiet=0.001)
            if len(received) > before:
                last_progress = time.monotonic()

        assert received.endswith(b"\r\n0\r\n\r\n"), f"stalled after {state.produced} chunks"
        assert state.closed == [chunks]
    finally:
        engine.close()
        client.close()
        listener.close()
