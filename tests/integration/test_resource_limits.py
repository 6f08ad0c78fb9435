"""Out of descriptors: a cluster started under ``ulimit -n`` keeps answering new clients, sheds
idle ones to make room, and says so in its log."""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import StartCluster, read_until_close, wait_until
from tests.ops_apps.client import status

DESCRIPTORS = 64
IDLE_CLIENTS = 200  # far more than two workers can hold under DESCRIPTORS
CLIENT_TIMEOUT = 10.0


def limit(which: int, value: int) -> Callable[[], None]:
    """A ``preexec_fn`` that sets one resource limit of the cluster (``ulimit`` in its shell)."""
    return lambda: resource.setrlimit(which, (value, value))


def status_line(port: int, path: str = "/") -> str:
    """The status line of one request on a new connection, or what went wrong instead."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data, _how = read_until_close(sock)
    except OSError as exc:
        return type(exc).__name__
    return data.split(b"\r\n", 1)[0].decode("latin-1") or "closed without an answer"


def idle_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` open connections that send nothing more: half kept alive after one request,
    half that never send one. Every request among them is answered."""
    clients = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        clients.append(sock)
        if index % 2 == 0:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 "), reply
    return clients


@pytest.mark.timeout(180)
@pytest.mark.parametrize("balance", ["round-robin", "shared"])
def test_idle_clients_beyond_the_descriptor_limit_are_shed_not_new_ones(
        start_cluster: StartCluster, tmp_path: Path, balance: str) -> None:
    """Regression: with ulimit -n 64 and 200 idle clients, new requests were reset with no answer
    (the kernel dropped the descriptors passed to a worker at its limit), and cluster-ctl status
    counted 50 untaken connections per worker for good."""
    ctl = tmp_path / "ctl"
    cluster = start_cluster("tests.apps.basic", "--balance", balance, "--keep-alive", "60",
                            "--control-socket", str(ctl), workers=2,
                            preexec_fn=limit(resource.RLIMIT_NOFILE, DESCRIPTORS))
    workers = sorted(cluster.worker_pids())
    clients = idle_clients(cluster.port, IDLE_CLIENTS)
    try:
        during = [status_line(cluster.port) for _ in range(10)]
    finally:
        for sock in clients:
            sock.close()

    wait_until(lambda: untaken(ctl) == 0, 10, message=lambda: f"untaken {untaken(ctl)}, want 0")
    wait_until(lambda: status_line(cluster.port) == "HTTP/1.1 200 OK", 10,
               message="a request served after the idle clients left")
    after = [status_line(cluster.port) for _ in range(20)]

    assert during == ["HTTP/1.1 200 OK"] * 10
    assert after == ["HTTP/1.1 200 OK"] * 20
    assert sorted(cluster.worker_pids()) == workers, "no worker died"
    log = cluster.log()
    assert "closed" in log and "idle connection(s), the oldest first: at the connection cap" in log
    assert "dropped" not in log and "Traceback" not in log


@pytest.mark.timeout(120)
def test_connections_dropped_at_the_limit_are_logged_and_not_counted_as_untaken(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    """When the app holds more descriptors than the worker keeps in reserve, the kernel can
    still drop passed connections. Regression: that went unseen, and cluster-ctl status counted
    them as untaken for good."""
    ctl = tmp_path / "ctl"
    cluster = start_cluster("tests.ops_apps.ops", "--keep-alive", "60", "--control-socket",
                            str(ctl), workers=1,
                            preexec_fn=limit(resource.RLIMIT_NOFILE, DESCRIPTORS))
    worker = cluster.worker_pids()
    assert cluster.get_json("/hold-files/24")["held_files"] == 24  # the reserve is 10
    clients = [socket.create_connection(("127.0.0.1", cluster.port), timeout=CLIENT_TIMEOUT)
               for _ in range(IDLE_CLIENTS // 2)]
    try:
        wait_until(lambda: "the kernel dropped" in cluster.log(), 15,
                   message=lambda: f"the drop logged in:\n{cluster.log()}")
    finally:
        for sock in clients:
            sock.close()

    wait_until(lambda: untaken(ctl) == 0, 10, message=lambda: f"untaken {untaken(ctl)}, want 0")
    wait_until(lambda: status_line(cluster.port, "/worker") == "HTTP/1.1 200 OK", 10,
               message="a request served after the idle clients left")
    assert [status_line(cluster.port, "/worker") for _ in range(10)] == ["HTTP/1.1 200 OK"] * 10
    assert cluster.worker_pids() == worker, "the worker did not die"
    assert cluster.log().count("the kernel dropped") == 1, "logged once"


def untaken(control_socket: Path) -> int:
    """Connections passed to the workers and not taken yet, as cluster-ctl status counts them."""
    return sum(worker["untaken"] for worker in status(control_socket)["workers"])
