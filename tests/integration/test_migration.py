"""Kept-alive connections survive every worker change made on purpose (issue 16, item 1).

A worker retired on purpose (rolling reload, ``--max-requests`` and ``--max-memory`` renewal,
scale down) hands its kept-alive connections back to the master, which passes them to a worker
that stays. Each test runs a real cluster under keep-alive load from several client threads,
each on one persistent connection, and counts as wrk does: a keep-alive connection the server
closes without ``Connection: close`` is a failure, retried or not (``Load(strict=True)``).
Before connection migration each of these saw failed requests; now none may fail.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import StartCluster, alive, wait_until
from tests.ops_apps.client import Load, ctl_ok, status, wait_log_count, wait_settled

OPS = "tests.ops_apps.ops"
KEEP = 6  # client threads, each on one keep-alive connection


def measured(what: str, value: object) -> None:
    print(f"MEASURED {what}: {value}")


def keep_alive_load(cluster: object, keep: int = KEEP) -> Load:
    """Keep-alive clients only, counted strictly, with a short pause between requests; their
    connections opened one by one, so round-robin spreads them over the workers."""
    return Load(cluster, "/worker", new=0, keep=keep, strict=True, pause=0.002,  # type: ignore[arg-type]
                stagger=0.05)


def report(name: str, load: Load) -> None:
    measured(f"{name}: requests / failures / connections opened / connections served by "
             f"several workers", (load.count(), len(load.failures), load.connections,
                                  load.connections_served_by_several()))


def assert_nothing_failed(load: Load) -> None:
    assert load.failures == [], f"{len(load.failures)} of {load.count() + len(load.failures)} " \
                                f"requests failed: {load.failures[:5]}"
    # The connections lived on in other workers: migration happened, not reconnection.
    assert load.connections_served_by_several() >= 1


def wait_gone(pids: set[int], timeout: float = 20.0) -> None:
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout,
               message=f"workers {sorted(pids)} to exit")


@pytest.mark.parametrize(("threads", "balance"),
                         [(1, "round-robin"), (4, "round-robin"), (1, "shared"), (4, "reuseport")])
def test_keep_alive_connections_survive_three_rolling_reloads(
        start_cluster: StartCluster, tmp_path: Path, threads: int, balance: str) -> None:
    """In every balance mode: where the workers accept themselves (shared, reuseport), the
    master still takes the connections back and passes them on."""
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--control-socket", str(sock), "--threads", str(threads),
                            "--balance", balance, workers=2)
    with keep_alive_load(cluster) as load:
        load.wait_for_more(100)
        for reload in (1, 2, 3):
            old = {w["pid"] for w in status(sock)["workers"]}
            if reload == 2:
                ctl_ok("reload", control_socket=sock)
            else:
                os.kill(cluster.master_pid, signal.SIGHUP)
            wait_log_count(cluster, "reload complete", reload)
            wait_settled(sock, 2)
            wait_gone(old)
            load.wait_for_more(50)
    report(f"threads={threads} {balance} 3 reloads", load)

    assert_nothing_failed(load)
    assert cluster.log().count("kept-alive connection(s) to the other workers") >= 6


def test_keep_alive_connections_survive_max_requests_recycling(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--control-socket", str(sock), "--max-requests", "150",
                            workers=2)
    with keep_alive_load(cluster) as load:
        wait_log_count(cluster, "served its --max-requests", 4, timeout=60)
        wait_settled(sock, 2)
        load.wait_for_more(50)
    report("max-requests", load)

    assert_nothing_failed(load)


def test_keep_alive_connections_survive_max_memory_recycling(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--max-memory", "60", "--control-socket", str(sock), workers=2)
    with keep_alive_load(cluster) as load:
        load.wait_for_more(100)
        for round_ in (1, 2):
            hog = cluster.get_json("/hog/80")  # a connection of its own, closed after
            wait_log_count(cluster, "above --max-memory 60", round_, timeout=20)
            cluster.wait_ready([hog["worker_id"]], 20, not_pids=frozenset([hog["pid"]]))
            wait_gone({hog["pid"]})
            load.wait_for_more(50)
    report("max-memory", load)

    assert_nothing_failed(load)


def test_keep_alive_connections_survive_scaling_down_from_four_to_one(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--control-socket", str(sock), workers=4)
    four = {w["pid"] for w in status(sock)["workers"]}
    with keep_alive_load(cluster, keep=8) as load:
        wait_until(lambda: four <= set(load.served_by()), 20,
                   message="the load to reach every worker")
        assert "scaling to 1 workers" in ctl_ok("scale", "1", control_socket=sock)
        one = wait_settled(sock, 1)["workers"][0]["pid"]
        wait_gone(four - {one})
        load.wait_for_more(50)

        os.kill(cluster.master_pid, signal.SIGTTIN)
        two = {w["pid"] for w in wait_settled(sock, 2)["workers"]}
        # New connections reach the new worker (the kept-alive ones stay where they are).
        with keep_alive_load(cluster, keep=4) as later:
            wait_until(lambda: two <= set(later.served_by()), 20,
                       message="the new worker to get connections")
            started = time.monotonic()
            os.kill(cluster.master_pid, signal.SIGTTOU)
            wait_settled(sock, 1)
            wait_gone(two - {one})
            measured("TTOU settled after (s)", round(time.monotonic() - started, 2))
            later.wait_for_more(50)
        load.wait_for_more(50)
    report("scale 4 -> 1", load)
    report("scale 1 -> 2 -> 1", later)

    assert_nothing_failed(load)
    assert_nothing_failed(later)


# -- a hung worker ---------------------------------------------------------------------------------


def test_a_hung_worker_loses_only_the_request_that_hung(start_cluster: StartCluster) -> None:
    """A hung worker cannot hand anything back, but nothing should wait for it: connections
    passed to it and not taken go to the other worker once its loop stops answering (not at
    its kill, --timeout later), so clients that wait less than --timeout lose nothing but the
    request that hung. A new connection per request; client timeout 3 s, --timeout 5."""
    cluster = start_cluster(OPS, "--timeout", "5", workers=2)
    spin = cluster.connection(timeout=30)
    try:
        with Load(cluster, "/worker", new=4, keep=0, timeout=3.0, pause=0.002) as load:
            load.wait_for_more(100)
            spin.request("GET", "/spin")
            match = wait_until(lambda: re.search(r"spin-start worker (\d+) pid (\d+)",
                                                 cluster.log()), 10, message="the hang")
            hung_id, hung_pid = int(match[1]), int(match[2])
            replacement = cluster.wait_ready([hung_id], 30, not_pids=frozenset([hung_pid]))
            wait_until(lambda: replacement[hung_id] in load.served_by(), 15,
                       message="the replacement to serve")
    finally:
        spin.close()
    measured("hung worker: requests / failures", (load.count(), len(load.failures)))

    assert load.failures == [], load.failures[:5]
