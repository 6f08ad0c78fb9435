"""A worker accepts on the master's listener only while the master leaves it to the workers
(every worker was busy: worker/accepting.py), not once it takes it back or the worker is asked
to stop; and every connection it accepts itself is counted for ``/metrics``."""

from __future__ import annotations

import socket
import time
from wsgiref.validate import validator

from flask_cluster.contract import WorkerSockets
from flask_cluster.http.parser import Limits
from flask_cluster.http.wsgi import base_environ
from flask_cluster.request_counters import ACCEPTED
from flask_cluster.scoreboard import Scoreboard
from flask_cluster.worker.accepting import accept_own
from flask_cluster.worker.engine import Engine
from tests.engine.harness import AppState, make_app
from tests.test_dispatch import listener

__all__ = ["listener"]  # a fixture, used by name


def test_a_worker_accepts_on_the_masters_listener_only_while_left_to_it(
        state: AppState, listener: socket.socket) -> None:
    board = Scoreboard(1)
    engine = Engine(validator(make_app(state)), threads=1, keep_alive=5.0, limits=Limits(),
                    base_environ=base_environ("h", "1", scheme="http", multithread=False),
                    access_log=None, on_request=lambda delta: None)
    messages, other_end = socket.socketpair()
    sockets = WorkerSockets(messages=messages, handoff=None, listener=None, reuseport=None,
                            family=listener.family, backlog=listener)
    clients: list[socket.socket] = []

    def connect_and_serve() -> bool:
        """A client connects and asks; True if the worker accepted a connection (the oldest
        in the backlog) within 0.3 s."""
        client = socket.create_connection(listener.getsockname())
        clients.append(client)
        client.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        deadline = time.monotonic() + 0.3
        while not engine.connections and time.monotonic() < deadline:
            engine.run_once(0.05)
        served = bool(engine.connections)
        for conn in list(engine.connections):
            conn.close()
        return served

    try:
        share = accept_own(engine, sockets, board, 0)
        assert share is not None
        assert not connect_and_serve()  # the master accepts: the word is not set

        board.workers_accept = True
        share.look()  # as at the end of a request, or on the tick
        assert connect_and_serve()  # the one the master would have accepted, first
        assert connect_and_serve()
        assert board.counters(0)[ACCEPTED] == 2

        board.workers_accept = False
        share.look()
        assert not connect_and_serve()

        board.workers_accept = True
        engine.stop_asked_at = time.monotonic()  # SIGTERM: a retiring worker takes no more
        share.look()
        assert not connect_and_serve()
        assert board.counters(0)[ACCEPTED] == 2
    finally:
        engine.close()
        for sock in (messages, other_end, *clients):
            sock.close()
