"""``--metrics`` against a real cluster: the master's ``/metrics`` counts every request once,
for the server and for the app's own ``prometheus_client`` counter, though workers were
recycled; it answers while every worker is busy; a connection held for a busy cluster, and the
workers accepting meanwhile, are shown while it lasts and not after, and every connection is
counted once whichever side accepted it; restarts are counted by reason; and
``cluster-ctl top --once`` shows each worker."""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ClusterProcess, StartCluster, alive, read_reply, wait_until
from tests.ops_apps.client import count_lines, ctl_ok, wait_log_count

APP = "tests.apps.metrics"
METRICS_LINE = re.compile(r"metrics on http://(?P<host>[\d.]+):(?P<port>\d+)/metrics")


def start(start_cluster: StartCluster, *options: str) -> ClusterProcess:
    return start_cluster(APP, "--metrics", "127.0.0.1:0", *options, workers=2)


def scrape(cluster: ClusterProcess, timeout: float = 10.0) -> dict[str, float]:
    """``/metrics`` of the master, as ``name{label="value",...}`` -> value."""
    match = METRICS_LINE.search(cluster.log())
    assert match is not None, cluster.log()
    conn = http.client.HTTPConnection(match["host"], int(match["port"]), timeout=timeout)
    try:
        reply = read_reply(conn, "GET", "/metrics")
    finally:
        conn.close()
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def scrape_when(cluster: ClusterProcess, name: str, value: float) -> dict[str, float]:
    """The first scrape (within 10 s) in which ``name`` is ``value``."""

    def matching() -> dict[str, float] | None:
        metrics = scrape(cluster)
        return metrics if metrics[name] == value else None

    return wait_until(matching, 10.0, interval=0.05, message=f"{name} == {value}")


def test_counts_are_exact_though_workers_were_recycled(start_cluster: StartCluster) -> None:
    cluster = start(start_cluster, "--max-requests", "50")

    for _ in range(500):
        assert cluster.request("/").status == 200

    def counted() -> dict[str, float] | None:  # the workers publish twice a second
        metrics = scrape(cluster)
        return metrics if metrics["flask_cluster_request_duration_seconds_count"] == 500 else None

    metrics = wait_until(counted, 10.0, interval=0.1)
    assert metrics["app_hits_total"] == 500  # the app's counter has no delay
    assert metrics['flask_cluster_requests_total{method="GET",status="2xx"}'] == 500
    assert sum(value for name, value in metrics.items()
               if name.startswith("flask_cluster_requests_total")) == 500
    assert metrics['flask_cluster_request_duration_seconds_bucket{le="+Inf"}'] == 500
    assert metrics["flask_cluster_connections_accepted_total"] == 500  # the scrapes are not

    def renewals_agree() -> int | None:  # a Retire may still be on its way to the master
        logged = count_lines(cluster, "served its --max-requests: replacing it")
        counted = scrape(cluster)['flask_cluster_worker_restarts_total{reason="max-requests"}']
        return logged if counted == logged else None

    # each worker is recycled: a renewing worker serves on until its successor is ready
    assert wait_until(renewals_agree, 20.0, interval=0.2) >= 2
    metrics = scrape(cluster)
    assert metrics["app_hits_total"] == 500  # the recycled workers' counts stay
    assert metrics['flask_cluster_requests_total{method="GET",status="2xx"}'] == 500


def test_a_scrape_is_answered_while_every_worker_is_busy(start_cluster: StartCluster) -> None:
    cluster = start(start_cluster)
    done: list[int] = []

    def slow() -> None:
        done.append(cluster.request("/slow?seconds=5", timeout=30).status)

    clients = [threading.Thread(target=slow, daemon=True) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        # The app's livesum gauge is each worker's slow requests in progress, summed: 2 means
        # both workers are inside a 5 s view, and this scrape was answered meanwhile.
        wait_until(lambda: scrape(cluster).get("app_busy") == 2, 10.0, interval=0.1)
        metrics = scrape(cluster)
        assert not done, "the slow requests finished before the scrapes: nothing was shown"
        assert metrics["flask_cluster_requests_in_flight"] == 2
    finally:
        for client in clients:
            client.join(30)
    assert done == [200, 200]
    metrics = wait_until(
        lambda: (m := scrape(cluster))["flask_cluster_request_duration_seconds_count"] == 2 and m,
        10.0, interval=0.1)
    assert metrics["app_busy"] == 0
    assert metrics['flask_cluster_request_duration_seconds_bucket{le="2.5"}'] == 0
    assert metrics['flask_cluster_request_duration_seconds_bucket{le="10.0"}'] == 2


def test_while_every_worker_is_busy_one_is_held_the_workers_accept_and_all_are_counted(
        start_cluster: StartCluster) -> None:
    # Holding each connection cost the master an accept, a Free and a hand-off: once one is
    # held, the master leaves its listener to the workers, each accepting when free. The held
    # count is the word the workers read: while it is above 0 each says Free after every
    # request, and left at 1 once the last held connection went out, every request cost the
    # master a message for good (keep-alive Flask hello 1.18x granian's, 1.48x after).
    cluster = start(start_cluster)
    done: list[int] = []

    def get(path: str) -> None:
        done.append(cluster.request(path, timeout=30).status)

    slow = [threading.Thread(target=get, args=("/slow?seconds=5",), daemon=True)
            for _ in range(2)]
    quick = [threading.Thread(target=get, args=("/",), daemon=True) for _ in range(4)]
    try:
        for client in slow:
            client.start()
        wait_until(lambda: scrape(cluster).get("app_busy") == 2, 10.0, interval=0.1)
        quick[0].start()
        metrics = scrape_when(cluster, "flask_cluster_workers_accepting", 1)
        assert metrics["flask_cluster_connections_held"] == 1
        screen = ctl_ok("--port", str(cluster.port), "status", app=APP)
        assert "every worker busy: each accepts new connections itself when free" in screen
        assert not done, "the slow requests finished first: no worker was ever busy"
        for client in quick[1:]:
            client.start()  # into the backlog, for whichever worker is free first
    finally:
        for client in [*slow, *quick]:
            client.join(30)
    assert done == [200] * 6
    # Once a worker has idled the master accepts again, counting every connection either way.
    metrics = scrape_when(cluster, "flask_cluster_workers_accepting", 0)
    # (Which side accepted the three is a race a loaded machine can tip either way: a worker
    # descheduled for 2 ms between its request and its accept looks idle, and the master takes
    # the listener back. The test below counts the workers' share over 400 connections.)
    assert metrics["flask_cluster_connections_accepted_total"] == 6
    assert metrics["flask_cluster_connections_held"] == 0
    assert cluster.request("/").status == 200


@pytest.mark.parametrize("balance", ["round-robin", "least-busy"])
def test_no_connection_is_lost_as_the_listener_goes_back_and_forth(
        start_cluster: StartCluster, balance: str) -> None:
    # 16 clients on 2 workers, a new connection per request, a slow one now and then: the
    # master leaves its listener to the workers and takes it back many times over.
    cluster = start(start_cluster, "--balance", balance)
    clients, each = 16, 25

    def client(number: int) -> list[int]:
        return [cluster.request("/slow?seconds=0.02" if (number + i) % 10 == 0 else "/",
                                timeout=30).status for i in range(each)]

    with ThreadPoolExecutor(clients) as pool:
        statuses = [status for done in pool.map(client, range(clients)) for status in done]
    assert statuses == [200] * (clients * each)
    metrics = scrape_when(cluster, "flask_cluster_workers_accepting", 0)
    assert metrics["flask_cluster_connections_accepted_total"] == clients * each
    assert metrics["flask_cluster_connections_accepted_by_workers_total"] > 0
    assert metrics["app_hits_total"] == clients * each


def test_connections_workers_accept_are_counted_with_shared(start_cluster: StartCluster) -> None:
    cluster = start(start_cluster, "--balance", "shared")
    for _ in range(20):
        assert cluster.request("/").status == 200
    metrics = scrape(cluster)
    assert metrics["flask_cluster_connections_accepted_total"] == 20
    assert metrics["flask_cluster_connections_accepted_by_workers_total"] == 20


def test_restarts_are_counted_by_reason(start_cluster: StartCluster) -> None:
    cluster = start(start_cluster)
    victim = cluster.ready_pids[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not alive(victim), 10.0)
    cluster.wait_ready([0], not_pids=frozenset({victim}))
    os.kill(cluster.master_pid, signal.SIGHUP)
    wait_log_count(cluster, "reload complete", 1)

    metrics = scrape(cluster)
    assert metrics['flask_cluster_worker_restarts_total{reason="crash"}'] == 1
    assert metrics['flask_cluster_worker_restarts_total{reason="reload"}'] == 2
    for reason in ("hung", "max-requests", "max-memory"):
        assert metrics[f'flask_cluster_worker_restarts_total{{reason="{reason}"}}'] == 0


def test_top_once_shows_every_worker(start_cluster: StartCluster) -> None:
    cluster = start(start_cluster)
    for _ in range(40):
        assert cluster.request("/").status == 200

    def shown() -> str | None:  # a frame once both workers have a p50 in their 10 s window
        screen = ctl_ok("--port", str(cluster.port), "top", "--once", app=APP)
        rows = [line.split() for line in screen.splitlines()[2:]]
        return screen if len(rows) == 2 and all(row[4] != "-" for row in rows) else None

    screen = wait_until(shown, 20.0, interval=0.5)
    lines = screen.splitlines()
    assert lines[0].startswith(f"{APP} on http://127.0.0.1:{cluster.port}  master "
                               f"{cluster.master_pid}  workers 2")
    assert lines[1].split() == ["worker", "pid", "state", "req/s", "p50", "ms", "p99", "ms",
                                "in", "flight", "rss", "MiB", "restarts"]
    rows = {int(line.split()[0]): line.split() for line in lines[2:]}
    assert {worker: int(row[1]) for worker, row in rows.items()} == cluster.ready_pids
    for row in rows.values():
        assert row[2] == "ready" and row[-1] == "0" and float(row[3]) > 0
