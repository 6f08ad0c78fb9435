"""With ``shared`` the kernel picks the accepting worker, and the one already awake tends to win:
a worker with two more connections open than another passes a new one, unread, to the master,
which gives it to another worker (worker/even_spread.py)."""

from __future__ import annotations

import contextlib

from tests.conftest import StartCluster, read_reply

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
