"""With ``--threads 1`` a connection never waits behind a request in progress while another
worker is free: the master holds a new one until a worker says it is free (master/choice.py)
and meanwhile leaves its socket to the workers, each accepting when free (worker/accepting.py);
and a worker whose request held its loop hands its other kept-alive ones to a free worker
(worker/spread.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import StartCluster, read_reply, wait_until
from tests.ops_apps.client import status

MORE = 4  # requests sent while both workers are busy


def _sleeping_pids(log: str) -> list[int]:
    return [int(line.split()[-1]) for line in log.splitlines() if line.startswith("sleep-start")]


@pytest.mark.parametrize("balance", ["round-robin", "least-busy"])
def test_new_connections_wait_for_the_worker_that_frees_first(start_cluster: StartCluster,
                                                              balance: str) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", balance, workers=2)
    with ThreadPoolExecutor(2 + MORE) as pool:
        slow = pool.submit(cluster.get_json, "/sleep/8", timeout=30)
        wait_until(lambda: len(_sleeping_pids(cluster.log())) == 1, 10, message="the slow one")
        first = pool.submit(cluster.get_json, "/sleep/0.5", timeout=30)
        wait_until(lambda: len(_sleeping_pids(cluster.log())) == 2, 10, message="both busy")
        # Both workers are serving now: before holding, half of these went to the worker in
        # the 8 s request and waited for it.
        more = list(pool.map(lambda _: cluster.get_json("/sleep/0.5", timeout=30), range(MORE)))
        answered_first = not slow.done()
        busy, free = _sleeping_pids(cluster.log())[:2]
        assert slow.result()["pid"] == busy

    assert [reply["pid"] for reply in [first.result(), *more]] == [free] * (1 + MORE)
    assert answered_first
    # None of them was passed to the busy worker first and taken back from it once its loop
    # had been held too long (which is how they reached the free worker before holding).
    assert "passing on the" not in cluster.log()


def test_kept_alive_connections_move_off_a_worker_whose_request_was_slow(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster("tests.apps.basic", "--balance", "round-robin", workers=2)
    with contextlib.ExitStack() as stack:
        by_worker: dict[int, list] = {}
        while max((len(conns) for conns in by_worker.values()), default=0) < 2:
            conn = stack.enter_context(contextlib.closing(cluster.connection()))
            by_worker.setdefault(read_reply(conn, "GET", "/worker").json()["pid"], []).append(conn)
        [(slow_pid, (slow, other))] = [(pid, conns) for pid, conns in by_worker.items()
                                       if len(conns) == 2]
        sock = other.sock

        slow.request("GET", "/sleep/1")
        wait_until(lambda: len(_sleeping_pids(cluster.log())) == 1, 10, message="the slow one")
        other.request("GET", "/worker")  # waits in the kernel behind the slow request
        assert json.loads(slow.getresponse().read())["pid"] == slow_pid
        moved = json.loads(other.getresponse().read())["pid"]
        again = read_reply(other, "GET", "/worker").json()["pid"]

        assert other.sock is sock  # the same connection, never closed
    free = [pid for pid in cluster.worker_pids() if pid != slow_pid]
    assert [moved, again] == free * 2


@pytest.mark.parametrize("balance", ["round-robin", "shared"])
def test_kept_alive_connections_move_to_a_worker_busy_with_quick_requests(
        start_cluster: StartCluster, balance: str) -> None:
    """The other worker is never idle (a client keeps it busy with quick requests), but it runs
    no slow ones: a better home than behind the next slow request all the same. Waiting for an
    idle worker left the connection behind every slow request (worker/spread.py)."""
    cluster = start_cluster("tests.apps.basic", "--balance", balance, workers=2)
    with contextlib.ExitStack() as stack:
        by_worker: dict[int, list] = {}
        for _ in range(100):  # shared: the kernel chooses, so open until both have enough
            if len(by_worker) == 2 and max(len(conns) for conns in by_worker.values()) >= 2:
                break
            conn = stack.enter_context(contextlib.closing(cluster.connection()))
            by_worker.setdefault(read_reply(conn, "GET", "/worker").json()["pid"], []).append(conn)
        [(slow_pid, (slow, other, *_))] = [(pid, conns) for pid, conns in by_worker.items()
                                           if len(conns) >= 2][:1]
        [(quick_pid, (hammer, *_))] = [(pid, conns) for pid, conns in by_worker.items()
                                       if pid != slow_pid]
        stop = threading.Event()

        def keep_busy() -> int:
            served = 0
            while not stop.is_set():
                assert read_reply(hammer, "GET", "/worker").json()["pid"] == quick_pid
                served += 1
            return served

        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(keep_busy)
            try:
                slow.request("GET", "/sleep/0.3")
                wait_until(lambda: len(_sleeping_pids(cluster.log())) == 1, 10,
                           message="the slow one")
                other.request("GET", "/worker")  # waits in the kernel behind the slow request
                assert json.loads(slow.getresponse().read())["pid"] == slow_pid
                json.loads(other.getresponse().read())
                moved = read_reply(other, "GET", "/worker").json()["pid"]
            finally:
                stop.set()
            assert busy.result() > 0

    assert moved == quick_pid


def test_a_worker_killed_while_the_workers_accept_loses_only_its_own_request(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    # While every worker is busy the workers accept on the master's socket themselves; what
    # waits in the kernel's backlog belongs to no worker, so a killed one takes none of it.
    sock = tmp_path / "ctl"
    cluster = start_cluster("tests.apps.basic", "--control-socket", str(sock), workers=2)
    with ThreadPoolExecutor(6) as pool:
        doomed = pool.submit(cluster.request, "/sleep/6", timeout=30)
        wait_until(lambda: len(_sleeping_pids(cluster.log())) == 1, 10, message="the doomed one")
        other = pool.submit(cluster.get_json, "/sleep/2", timeout=30)
        wait_until(lambda: len(_sleeping_pids(cluster.log())) == 2, 10, message="both busy")
        held = pool.submit(cluster.get_json, "/worker", timeout=30)
        wait_until(lambda: status(sock)["master"]["workers_accept"], 10,
                   message="the workers to accept")
        waiting = [pool.submit(cluster.get_json, "/worker", timeout=30) for _ in range(3)]
        victim = _sleeping_pids(cluster.log())[0]
        os.kill(victim, signal.SIGKILL)

        assert other.result()["pid"] != victim
        answered = [future.result()["pid"] for future in [held, *waiting]]
        with pytest.raises(OSError):  # reset or closed: its request died with it
            doomed.result()
    assert victim not in answered
    wait_until(lambda: not status(sock)["master"]["workers_accept"], 10,
               message="the master to accept again")
    assert cluster.get_json("/worker")["pid"] != victim
