"""``cluster.broadcast`` and ``cluster.gather`` between the workers of a real cluster, and the
same calls outside ``cluster-run``."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import ClusterProcess, StartCluster, rss_kib, wait_until

APP = "tests.apps.messages"
MAX_MASTER_RSS_KIB = 200 * 1024


def worker_states(cluster: ClusterProcess) -> list[dict[str, Any]]:
    return cluster.get_json("/state")["workers"]  # type: ignore[no-any-return]


def wait_for_states(cluster: ClusterProcess, done: Any, timeout: float) -> list[dict[str, Any]]:
    """Poll every worker's recorded state until ``done(state)`` holds for each of them."""
    states: list[dict[str, Any]] = []

    def all_done() -> bool:
        nonlocal states
        states = worker_states(cluster)
        return len(states) == cluster.workers and all(done(state) for state in states)

    wait_until(all_done, timeout, interval=0.1,
               message=lambda: "every worker's handlers: " + ", ".join(
                   f"worker {s['worker_id']}: {len(s['numbers'])} numbers, "
                   f"{len(s['ordered'])} ordered, {s['flood']} flood" for s in states))
    return states


def test_broadcast_reaches_every_worker_once_in_order(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, workers=4)

    reply = cluster.get_json("/broadcast/number?n=1000", "POST")

    assert reply == {"sent": 1000, "pid": reply["pid"]}
    states = wait_for_states(cluster, lambda state: len(state["numbers"]) >= 1000, 30)
    assert sorted(state["pid"] for state in states) == cluster.worker_pids()
    assert [state["worker_id"] for state in states] == [0, 1, 2, 3]
    for state in states:
        assert state["numbers"] == list(range(1000)), f"worker {state['worker_id']}"


def test_broadcasts_from_two_workers_are_seen_in_one_order(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, workers=4)

    with ThreadPoolExecutor(2) as pool:
        senders = list(pool.map(lambda tag: cluster.get_json(f"/broadcast/order?tag={tag}&n=500",
                                                             "POST"), ["a", "b"]))

    assert senders[0]["pid"] != senders[1]["pid"], "round-robin sent them to two workers"
    states = wait_for_states(cluster, lambda state: len(state["ordered"]) >= 1000, 30)
    first = states[0]["ordered"]
    for state in states:
        assert state["ordered"] == first, f"worker {state['worker_id']} saw another order"
    for tag in "ab":
        assert [index for sender, index in first if sender == tag] == list(range(500))


@pytest.mark.parametrize(("workers", "threads"), [(4, 1), (2, 3)], ids=["loop", "threads"])
def test_gather_returns_every_workers_reply(start_cluster: StartCluster, workers: int,
                                            threads: int) -> None:
    cluster = start_cluster(APP, "--threads", str(threads), workers=workers)

    replies = [cluster.get_json("/gather/pid") for _ in range(workers)]

    for reply in replies:
        pids = reply["replies"]
        assert len(set(pids)) == workers
        assert sorted(pids) == cluster.worker_pids()
        assert pids == [cluster.ready_pids[wid] for wid in range(workers)], "in worker_id order"
    assert sorted(reply["asker"] for reply in replies) == cluster.worker_pids()


def test_gather_reports_a_stuck_worker_as_missing(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, workers=4)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(cluster.request, "/sleep/5", timeout=30)
        line = wait_until(lambda: next((line for line in cluster.log().splitlines()
                                        if line.startswith("sleep-start")), None),
                          10, message="the slow request")
        stuck = int(line.split()[2])

        started = time.monotonic()
        reply = cluster.request("/gather/pid?timeout=0.5")
        elapsed = time.monotonic() - started

        assert reply.status == 504, reply.text
        assert elapsed < 3.0, f"gather took {elapsed:.2f}s"
        assert not slow.done(), "the gather finished while the worker was still stuck"
        result = reply.json()
        assert result["error"] == "GatherIncomplete"
        assert result["missing"] == [stuck]
        assert result["errors"] == {}
        others = {str(wid): pid for wid, pid in cluster.ready_pids.items() if wid != stuck}
        assert result["replies"] == others
        assert slow.result().status == 200

    assert sorted(cluster.get_json("/gather/pid")["replies"]) == cluster.worker_pids()


def test_handler_that_raises_is_logged_and_others_still_run(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, workers=2)
    workers = cluster.worker_pids()

    assert cluster.get_json("/broadcast/fail", "POST") == {"sent": 1}

    wait_for_states(cluster, lambda state: state["fail"] == 1, 15)
    wait_until(lambda: cluster.log().count("ValueError: handler-boom-marker payload") == 2, 10,
               message=lambda: f"both workers' tracebacks in:\n{cluster.log()}")
    log = cluster.log()
    assert log.count("Traceback (most recent call last)") == 2
    assert "for topic 'fail' raised" in log
    assert [cluster.request("/worker").status for _ in range(10)] == [200] * 10
    assert cluster.worker_pids() == workers

    reply = cluster.request("/gather/fail")
    assert reply.status == 504
    errors = reply.json()["errors"]
    assert sorted(errors) == ["0", "1"]
    assert all("ValueError: handler-boom-marker None" in text for text in errors.values())
    assert cluster.worker_pids() == workers


@pytest.mark.parametrize("options", [["--threads", "4"], ["--balance", "least-busy"]],
                         ids=["threads", "least-busy"])
def test_flood_of_broadcasts(start_cluster: StartCluster, options: list[str]) -> None:
    cluster = start_cluster(APP, *options, workers=2)
    count = 100_000
    answered_during = 0
    failures: list[str] = []
    peak_rss = rss_kib(cluster.master_pid)
    with ThreadPoolExecutor(1) as pool:
        flood = pool.submit(cluster.request, f"/flood?n={count}", "POST", timeout=90)
        deadline = time.monotonic() + 100
        for _ in range(100_000):  # bounded; ends when the flood does
            if flood.done() or time.monotonic() > deadline:
                break
            peak_rss = max(peak_rss, rss_kib(cluster.master_pid))
            reply = cluster.request("/worker", timeout=30)
            if flood.done():
                break
            if reply.status == 200:
                answered_during += 1
            else:
                failures.append(f"{reply.status} {reply.text}")
            time.sleep(0.05)  # a steady trickle, not a second flood
        result = flood.result(timeout=100)

    assert result.status == 200, result.text
    assert result.json()["sent"] == count
    assert failures == []
    assert answered_during >= 3
    assert peak_rss < MAX_MASTER_RSS_KIB, f"master RSS reached {peak_rss} KiB"
    states = wait_for_states(cluster, lambda state: state["flood"] >= count, 60)
    assert [state["flood"] for state in states] == [count, count]
    assert rss_kib(cluster.master_pid) < MAX_MASTER_RSS_KIB
    assert "stuck" not in cluster.log()


@pytest.mark.parametrize(("how", "reasons"), [
    ("broadcast", ["cannot pickle function", "lambda"]),
    ("gather", ["cannot pickle function", "lambda"]),
    ("too-big", ["more than the 1048576 byte limit", "CLUSTER_MAX_MESSAGE_BYTES"]),
], ids=["broadcast-lambda", "gather-lambda", "too-big"])
def test_unsendable_data_raises_message_error_in_the_view(start_cluster: StartCluster,
                                                          how: str, reasons: list[str]) -> None:
    cluster = start_cluster(APP, workers=2)

    reply = cluster.request(f"/unpicklable/{how}")

    assert reply.status == 400
    result = reply.json()
    assert result["error"] == "MessageError"
    for reason in reasons:
        assert reason in result["reason"]
    states = worker_states(cluster)
    assert [state["numbers"] for state in states] == [[], []]
    assert [cluster.request("/worker").status for _ in range(4)] == [200] * 4


def test_same_calls_work_outside_cluster_run() -> None:
    from tests.apps import messages

    messages.numbers.clear()
    app = messages.create_app()
    client = app.test_client()

    assert client.get("/worker").get_json() == {
        "pid": os.getpid(), "worker_id": None, "worker_count": 1, "is_worker": False}
    assert client.post("/broadcast/number?n=3").status_code == 200
    assert messages.numbers == [0, 1, 2]
    assert client.get("/gather/pid").get_json()["replies"] == [os.getpid()]
    state = client.get("/state").get_json()["workers"]
    assert [(s["worker_id"], s["numbers"]) for s in state] == [(None, [0, 1, 2])]
    reply = client.get("/unpicklable/broadcast")
    assert reply.status_code == 400
    assert reply.get_json()["error"] == "MessageError"
    messages.numbers.clear()
