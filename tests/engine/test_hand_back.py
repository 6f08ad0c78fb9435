"""A retiring worker hands its kept-alive connections back to the master (worker/migration.py):
idle ones at once, busy ones once their response is complete, none closed; what cannot move is
finished with ``Connection: close`` as before. The master's end of the hand-off channel is a
socket pair here; what arrives on it is read as the master would."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from wsgiref.validate import validator

import pytest

from flask_cluster import ipc
from flask_cluster.worker.migration import HandBack, Retirement
from tests.engine.harness import TIMEOUT, AppState, Server, build, make_app, wait_for


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the master's end, the worker's end) of a hand-off channel."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master_end.setblocking(False)
    worker_end.setblocking(False)
    yield master_end, worker_end
    master_end.close()
    worker_end.close()


def retire(server: Server, worker_end: socket.socket) -> Retirement:
    """What the worker does on a SIGTERM with its HAND_BACK word set."""

    def begin() -> Retirement:
        retirement = Retirement(HandBack(server.engine, worker_end))
        retirement.begin()
        server.engine.remove_reader(server.listener)
        server.engine.begin_stop(5.0)
        return retirement

    return server.call(begin)


def handed_back(master_end: socket.socket, count: int) -> list[socket.socket]:
    """The ``count`` connections the master receives, as sockets it would pass on."""
    got: list[socket.socket] = []

    def more() -> bool:
        got.extend(sock for sock, _ in ipc.receive_connections(master_end, 64, socket.AF_INET))
        return len(got) >= count

    wait_for(more, what=f"{count} connection(s) handed back")
    for sock in got:
        sock.settimeout(TIMEOUT)
    return got


def test_an_idle_connection_goes_back_open_with_its_peer(
        make_server: Callable[..., Server], state: AppState,
        channel: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = channel
    server = make_server(validator(make_app(state)))
    with server.client() as client:
        assert client.request("GET", "/").status == 200
        peer = client.sock.getsockname()

        retirement = retire(server, worker_end)

        [passed] = handed_back(master_end, 1)
        assert passed.getpeername() == peer
        client.send(build("GET", "/next"))  # sent after the worker let go: nothing is lost
        assert passed.recv(65536).startswith(b"GET /next HTTP/1.1\r\n")
        passed.close()
        assert retirement.handed == 1
    server.thread.join(TIMEOUT)
    assert not server.thread.is_alive(), "a worker left with nothing to serve ends"


def test_a_busy_connection_goes_back_once_its_response_is_complete(
        make_server: Callable[..., Server], state: AppState,
        channel: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = channel
    server = make_server(validator(make_app(state)), threads=4)
    with server.client() as client:
        client.send(build("GET", "/wait"))
        assert state.started.wait(TIMEOUT)

        retire(server, worker_end)
        assert ipc.receive_passed(master_end, 1) == []  # not while its response is running
        # What the client sends meanwhile is not read here: it goes with the descriptor.
        state.release.set()
        reply = client.response()
        client.send(build("GET", "/after"))

        assert reply.body == b"released" and reply.header("Connection") != "close"
        [passed] = handed_back(master_end, 1)
        assert passed.recv(65536).startswith(b"GET /after HTTP/1.1\r\n")
        passed.close()
    server.thread.join(TIMEOUT)
    assert not server.thread.is_alive()


def test_pipelined_requests_already_read_are_answered_and_closed(
        make_server: Callable[..., Server], state: AppState,
        channel: tuple[socket.socket, socket.socket]) -> None:
    """Requests read before the retirement cannot travel: the worker answers them, the last
    with ``Connection: close``, and the connection is not handed back."""
    master_end, worker_end = channel
    server = make_server(validator(make_app(state)), threads=4)
    with server.client() as client:
        client.send(build("GET", "/wait") + build("GET", "/second"))
        assert state.started.wait(TIMEOUT)
        wait_for(lambda: server.call(lambda: all(c.http.has_requests
                                                 for c in server.engine.connections)),
                 what="the pipelined request to be read")

        retire(server, worker_end)
        state.release.set()

        assert client.response().body == b"released"
        last = client.response()
        assert last.status == 200 and last.header("Connection") == "close"
        assert client.closed_by_server()
    server.thread.join(TIMEOUT)
    assert ipc.receive_passed(master_end, 1) == []


def test_connections_of_a_worker_that_was_not_asked_are_closed_as_before(
        make_server: Callable[..., Server], state: AppState) -> None:
    server = make_server(validator(make_app(state)))
    with server.client() as client:
        assert client.request("GET", "/").status == 200

        server.begin_stop(5.0)

        assert client.closed_by_server()


def test_with_the_master_gone_idle_connections_are_closed(
        make_server: Callable[..., Server], state: AppState,
        channel: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = channel
    server = make_server(validator(make_app(state)))
    with server.client() as client:
        assert client.request("GET", "/").status == 200
        master_end.close()

        retire(server, worker_end)

        assert client.closed_by_server()
