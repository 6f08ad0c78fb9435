"""Serving HTTP through a real cluster: balance modes, keep-alive, Unix sockets, threads, errors,
worker identity, lifecycle hooks and the command line's options."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Reply, StartCluster, read_reply, wait_until

BALANCE_MODES = ["round-robin", "least-busy", "shared", "reuseport"]


def test_round_robin_alternates_between_two_workers(start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", "round-robin", workers=2)
    served = Counter(cluster.get_json("/worker")["pid"] for _ in range(40))

    assert sorted(served.values()) == [20, 20]
    assert sorted(served) == cluster.worker_pids()


@pytest.mark.parametrize("balance", BALANCE_MODES)
def test_every_balance_mode_serves(start_cluster: StartCluster, balance: str) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", balance, workers=2)
    workers = set(cluster.worker_pids())
    assert len(workers) == 2

    replies = [cluster.request("/") for _ in range(40)]
    assert [reply.status for reply in replies] == [200] * 40
    assert {reply.text for reply in replies} == {"Hello, World!"}
    served = {cluster.get_json("/worker")["pid"] for _ in range(10)}
    assert served <= workers


@pytest.mark.parametrize("balance", BALANCE_MODES)
def test_concurrent_clients_are_all_answered(start_cluster: StartCluster, balance: str) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", balance, workers=2)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: cluster.request("/worker"), range(64)))

    assert [reply.status for reply in replies] == [200] * 64
    assert {reply.json()["pid"] for reply in replies} <= set(cluster.worker_pids())


def test_least_busy_avoids_the_busy_worker(start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", "least-busy", workers=2)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(cluster.request, "/sleep/4")
        busy = wait_until(lambda: _sleeping_pid(cluster.log()), 10, message="the slow request")
        others = [cluster.get_json("/worker")["pid"] for _ in range(10)]
        # Each of these was answered while the slow request was still in flight.
        assert not slow.done()
        assert slow.result().status == 200

    idle = [pid for pid in cluster.worker_pids() if pid != busy]
    assert others == idle * 10


def _sleeping_pid(log: str) -> int | None:
    for line in log.splitlines():
        if line.startswith("sleep-start"):
            return int(line.split()[-1])
    return None


def test_keep_alive_serves_several_requests_on_one_connection(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=2)
    conn = cluster.connection()
    try:
        first = read_reply(conn, "GET", "/worker")
        sock = conn.sock
        replies = [first, *(read_reply(conn, "GET", "/worker") for _ in range(9))]
        assert conn.sock is sock, "the connection was never reopened"
    finally:
        conn.close()

    assert [reply.status for reply in replies] == [200] * 10
    assert len({reply.json()["pid"] for reply in replies}) == 1
    assert first.headers.get("connection", "keep-alive").lower() != "close"


def test_pipelined_requests_are_answered_in_order(start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=1)
    requests = (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /worker HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    with socket.create_connection((cluster.host, cluster.port), timeout=15) as sock:
        sock.sendall(requests)
        data = b""
        for _ in range(1000):  # until the server closes after the third response
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk

    assert data.count(b"HTTP/1.1 200 ") == 3
    first, second, third = (data.index(b"Hello, World!"), data.index(b'"worker_id"'),
                            data.rindex(b"Hello, World!"))
    assert first < second < third


def test_unix_socket(start_cluster: StartCluster, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    cluster = start_cluster("tests.apps.basic", "--uds", str(path), workers=2)
    assert cluster.address == f"unix:{path}"

    replies = [cluster.request("/worker") for _ in range(6)]
    assert [reply.status for reply in replies] == [200] * 6
    assert {reply.json()["pid"] for reply in replies} == set(cluster.worker_pids())

    cluster.proc.terminate()
    assert cluster.wait_exit(15) == 0
    assert not path.exists(), "the socket file is removed on a clean stop"


def test_threads_serve_slow_requests_in_parallel_in_one_worker(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", "--threads", "4", workers=1)
    # /rendezvous answers only once four requests are inside it at the same time.
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: cluster.request("/rendezvous", timeout=30), range(4)))

    assert [reply.status for reply in replies] == [200] * 4
    assert len({reply.json()["pid"] for reply in replies}) == 1
    assert len({reply.json()["thread"] for reply in replies}) == 4


def test_view_exception_gives_500_and_the_worker_keeps_serving(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=1)
    before = cluster.get_json("/worker")["pid"]

    reply = cluster.request("/boom")

    assert reply.status == 500
    assert b"Traceback" not in reply.body
    assert b"boom-marker" not in reply.body
    wait_until(lambda: "boom-marker" in cluster.log(), 10, message="the error in the log")
    log = cluster.log()
    assert "Traceback" in log
    assert "RuntimeError: boom-marker" in log
    after = [cluster.get_json("/worker")["pid"] for _ in range(5)]
    assert after == [before] * 5
    assert cluster.worker_pids() == [before]


def test_errors_and_answers_alternate_for_a_keep_alive_client(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=1)
    conn = cluster.connection()  # http.client reconnects if the server closed after a 500
    try:
        replies = [read_reply(conn, "GET", path) for path in ("/boom", "/", "/boom", "/")]
    finally:
        conn.close()
    assert [reply.status for reply in replies] == [500, 200, 500, 200]
    assert [reply.text for reply in replies[1::2]] == ["Hello, World!"] * 2


def test_worker_id_and_worker_count(start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=3)
    seen = {}
    for _ in range(9):
        info = cluster.get_json("/worker")
        seen[info["pid"]] = info

    assert sorted(seen) == cluster.worker_pids()
    assert sorted(info["worker_id"] for info in seen.values()) == [0, 1, 2]
    assert {info["worker_count"] for info in seen.values()} == {3}
    assert all(info["is_worker"] for info in seen.values())
    assert {info["worker_id"]: pid for pid, info in seen.items()} == cluster.ready_pids


def test_worker_hooks_run_in_each_worker(start_cluster: StartCluster, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.log"
    cluster = start_cluster("tests.apps.basic", workers=2, env={"HOOK_LOG": str(hooks)})
    pids = {wid: pid for wid, pid in cluster.ready_pids.items()}

    started = sorted(hooks.read_text().splitlines())
    assert started == [f"start {wid} {pid}" for wid, pid in sorted(pids.items())]

    cluster.proc.terminate()
    assert cluster.wait_exit(15) == 0
    lines = sorted(hooks.read_text().splitlines())
    assert lines == sorted([*started, *(f"stop {wid} {pid}" for wid, pid in pids.items())])


def test_pid_file(start_cluster: StartCluster, tmp_path: Path) -> None:
    pid_file = tmp_path / "master.pid"
    cluster = start_cluster("tests.apps.basic", "--pid", str(pid_file), workers=1)

    assert pid_file.read_text().strip() == str(cluster.master_pid)
    assert cluster.request("/").status == 200


def test_environment_variables_set_options(start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=1,
                            env={"FLASK_CLUSTER_RUN_THREADS": "4"})
    assert "threads 4" in cluster.log()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: cluster.request("/rendezvous", timeout=30), range(4)))
    assert [reply.status for reply in replies] == [200] * 4


def _statuses(replies: list[Reply]) -> list[int]:
    return [reply.status for reply in replies]


def test_slow_client_does_not_block_others_in_the_same_worker(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", workers=1)
    with socket.create_connection((cluster.host, cluster.port), timeout=15) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # headers never finished
        replies = [cluster.request("/") for _ in range(5)]
        assert _statuses(replies) == [200] * 5
        slow.sendall(b"Connection: close\r\n\r\n")
        assert slow.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_requests_in_flight_finish_while_another_thread_waits(
        start_cluster: StartCluster) -> None:
    """With --threads 2, a slow view holds one thread; the other keeps answering."""
    cluster = start_cluster("tests.apps.basic", "--threads", "2", workers=1)
    done = threading.Event()

    def slow_request() -> Reply:
        try:
            return cluster.request("/sleep/2")
        finally:
            done.set()

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(slow_request)
        wait_until(lambda: "sleep-start" in cluster.log(), 10, message="the slow request")
        quick = [cluster.request("/") for _ in range(5)]
        assert not done.is_set()
        assert slow.result().status == 200
    assert _statuses(quick) == [200] * 5
