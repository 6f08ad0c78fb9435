"""With ``shared`` the kernel picks the accepting worker, and the one already awake tends to win:
a worker with two more connections open than another passes a new one, unread, to the master,
which gives it to another worker (worker/even_spread.py). In every mode, a burst of kept-alive
connections that lands on one worker is evened out afterwards (worker/spread.py)."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading

import pytest

from tests.conftest import StartCluster, read_reply, wait_until

CLIENTS = 8


def test_kept_alive_connections_opened_one_by_one_reach_every_worker(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", "shared", workers=4)
    with contextlib.ExitStack() as stack:
        conns, first = [], []
        for _ in range(CLIENTS):  # one after another, each kept open, as a client pool fills
            conn = stack.enter_context(contextlib.closing(cluster.connection()))
            conns.append(conn)
            first.append(read_reply(conn, "GET", "/worker").json()["pid"])
        second = [read_reply(conn, "GET", "/worker").json()["pid"] for conn in conns]

    counts = sorted(first.count(pid) for pid in set(first))
    assert set(first) == set(cluster.worker_pids()), first
    assert counts[-1] - counts[0] <= 2, counts
    assert second == first  # each stays with the worker that served it


BURST = 10


@pytest.mark.parametrize("balance", ["round-robin", "shared"])
def test_a_burst_of_kept_alive_connections_on_one_worker_is_evened_out(
        start_cluster: StartCluster, balance: str) -> None:
    # While both workers serve a request, the master holds new connections and the first
    # worker to free up gets them all (shared: whichever the kernel wakes). Nothing moved
    # them afterwards while no request was slow: a client pool opened at once stayed on one.
    cluster = start_cluster("tests.apps.basic", "--balance", balance, workers=2)
    with contextlib.ExitStack() as stack:
        busy = [threading.Thread(target=cluster.get_json, args=("/sleep/1",), daemon=True)
                for _ in range(2)]
        for thread in busy:
            thread.start()
        wait_until(lambda: cluster.log().count("sleep-start") == 2, 10, message="both busy")
        conns: list[http.client.HTTPConnection] = []
        for _ in range(BURST):
            conn = stack.enter_context(contextlib.closing(cluster.connection()))
            conn.request("GET", "/worker")
            conns.append(conn)
        first = [read_reply_of(conn) for conn in conns]
        socks = [conn.sock for conn in conns]
        for thread in busy:
            thread.join(10)

        def split() -> list[int] | None:
            pids = [read_reply(conn, "GET", "/worker").json()["pid"] for conn in conns]
            counts = sorted(pids.count(pid) for pid in cluster.worker_pids())
            return counts if counts[-1] - counts[0] <= 2 else None

        counts = wait_until(split, 10, interval=0.1,
                            message=lambda: f"an even split (first: {sorted(first)})")
        assert [conn.sock for conn in conns] == socks  # moved, never reconnected
    assert sum(counts) == BURST


def read_reply_of(conn: http.client.HTTPConnection) -> int:
    reply = conn.getresponse()
    assert reply.status == 200
    pid: int = json.loads(reply.read())["pid"]
    return pid
