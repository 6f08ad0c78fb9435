"""Broadcasts across machines: two clusters on one Redis stand in for two hosts.

Each test starts its own ``redis-server`` on a free loopback port (pytest-xprocess), never the
machine's 6379, and stops it at the end.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flask_cluster import signing
from flask_cluster.master import entries
from flask_cluster.master.broker_link import stream_key
from tests.conftest import ClusterProcess, StartCluster, wait_until

redis = pytest.importorskip("redis")
xprocess_module = pytest.importorskip("xprocess")

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs the redis-server binary")

APP = "tests.apps.broker:create_app"
KEY = b"test-broker-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of our own; :meth:`stop` and :meth:`start` again keep its port and data."""

    def __init__(self, xprocess: Any, directory: Path, *, durable: bool) -> None:
        self.xprocess = xprocess
        self.port = free_port()
        self.name = f"redis-{self.port}"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        persistence = ["--appendonly", "yes", "--dir", str(directory)] if durable else \
            ["--appendonly", "no"]
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", *persistence]

        class Starter(xprocess_module.ProcessStarter):  # type: ignore[misc, name-defined]
            pattern = "Ready to accept connections"
            args = command
            timeout = 30
            terminate_on_interrupt = True

        self.starter = Starter

    def start(self) -> None:
        self.xprocess.ensure(self.name, self.starter, restart=True)

    def stop(self) -> None:
        self.xprocess.getinfo(self.name).terminate(timeout=10)

    def client(self) -> Any:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def redis_server(xprocess: Any, tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(*, durable: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = RedisServer(xprocess, directory, durable=durable)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def two_hosts(start_cluster: StartCluster, server: RedisServer, name: str = "shared",
              workers: int = 2) -> tuple[ClusterProcess, ClusterProcess]:
    return tuple(start_cluster(APP, "--broker", server.url, "--cluster-name", name,  # type: ignore[return-value]
                               workers=workers) for _ in range(2))


def send_order(cluster: ClusterProcess, tag: str, count: int) -> None:
    cluster.get_json(f"/broadcast/order?tag={tag}&n={count}", "POST")


def wait_for_states(cluster: ClusterProcess, done: Callable[[dict[str, Any]], Any],
                    timeout: float, workers: int | None = None) -> list[dict[str, Any]]:
    """Poll the recorded state of every worker on every host (a gather through the broker)
    until there are ``workers`` of them (default: the cluster's) and ``done(state)`` holds for
    each."""
    wanted = cluster.workers if workers is None else workers
    states: list[dict[str, Any]] = []

    def all_done() -> bool:
        nonlocal states
        reply = cluster.request("/state")
        states = reply.json()["workers"] if reply.status == 200 else []
        return len(states) == wanted and all(done(state) for state in states)

    wait_until(all_done, timeout, interval=0.1, message=lambda: "every worker's handlers: " + ", ".join(
        f"pid {s['pid']}: {len(s['numbers'])} numbers, {len(s['ordered'])} ordered"
        for s in states))
    return states


def test_broadcasts_from_two_hosts_reach_every_worker_once_in_one_order(
        start_cluster: StartCluster, redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server()
    one, two = two_hosts(start_cluster, server)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: send_order(*pair, 500), [(one, "a"), (two, "b")]))

    states = wait_for_states(one, lambda state: len(state["ordered"]) >= 1000, 60, workers=4)
    assert len({state["pid"] for state in states}) == 4
    first = states[0]["ordered"]
    assert sorted(map(tuple, first)) == sorted([("a", i) for i in range(500)]
                                               + [("b", i) for i in range(500)])
    for state in states:
        assert state["ordered"] == first, f"worker pid {state['pid']}"
    assert [item for item in first if item[0] == "a"] == [["a", i] for i in range(500)]


def test_entries_unsigned_or_signed_with_another_key_run_no_handler(
        start_cluster: StartCluster, redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server()
    cluster = start_cluster(APP, "--broker", server.url, "--cluster-name", "forged", workers=2)
    forged = pickle.dumps(666)
    client = server.client()
    stamp = signing.Stamper().next(signing.BROADCAST)
    for number, payload in enumerate([
            forged, signing.sign(b"another key", signing.BROADCAST, "number", forged, stamp),
            b"short"], start=1):
        client.xadd(stream_key("forged"),
                    entries.broadcast_fields(b"intruder", number, "number", payload, None))
    for malformed in ({"garbage": "1"}, {"m": "b intruder four - number", "p": ""}):
        client.xadd(stream_key("forged"), malformed)  # type: ignore[arg-type]

    cluster.get_json("/broadcast/number?n=1", "POST")

    states = wait_for_states(cluster, lambda state: state["numbers"], 30)
    assert all(state["numbers"] == [0] for state in states)
    assert cluster.log().count("a malformed stream entry in Redis") == 1  # and the master lives
    wait_until(lambda: cluster.log().count("signature is missing or wrong") == 6, 10,
               message="three rejections logged by each of two workers")


def test_two_cluster_names_on_one_redis_never_see_each_others_messages(
        start_cluster: StartCluster, redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server()
    one = start_cluster(APP, "--broker", server.url, "--cluster-name", "one", workers=1)
    two = start_cluster(APP, "--broker", server.url, "--cluster-name", "two", workers=1)
    for cluster in (one, two):  # a gather sees this host only: the other name is not a host here
        wait_for_states(cluster, lambda state: True, 10)

    send_order(one, "one", 3)
    send_order(two, "two", 3)

    for cluster, tag in ((one, "one"), (two, "two")):
        state = wait_for_states(cluster, lambda state: len(state["ordered"]) >= 3, 30)[0]
        # the other name's broadcasts were sent first: had they arrived, they would be here
        assert state["ordered"] == [[tag, i] for i in range(3)]


def test_nothing_lost_or_repeated_while_redis_is_down(
        start_cluster: StartCluster, redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server(durable=True)
    one, two = two_hosts(start_cluster, server, name="blip", workers=1)
    send_order(one, "before", 10)
    wait_for_states(two, lambda state: len(state["ordered"]) >= 10, 30, workers=2)

    server.stop()
    wait_until(lambda: "lost while" in one.log() and "lost while" in two.log(), 15,
               message="both masters noticing that Redis is gone")
    send_order(one, "a", 100)
    send_order(two, "b", 100)
    time.sleep(3)  # the outage the broadcasts wait through: part of the scenario, not a wait
    server.start()

    states = wait_for_states(one, lambda state: len(state["ordered"]) >= 210, 60, workers=2)
    first = states[0]["ordered"]
    assert sorted(map(tuple, first)) == sorted(
        [("before", i) for i in range(10)] + [("a", i) for i in range(100)]
        + [("b", i) for i in range(100)])
    for state in states:
        assert state["ordered"] == first
    for tag in ("a", "b"):
        assert [item for item in first if item[0] == tag] == [[tag, i] for i in range(100)]
    assert "back:" in one.log()


def test_a_broker_without_a_key_stops_the_cluster_with_one_line(
        start_cluster: StartCluster, redis_server: Callable[..., RedisServer]) -> None:
    server = redis_server()
    cluster = start_cluster("tests.apps.messages:create_app", "--broker", server.url,
                            workers=1, wait=False)

    assert cluster.wait_exit(30) != 0
    last = cluster.log().strip().splitlines()[-1]
    assert "SigningKeyMissing" in last and "CLUSTER_BROKER_SECRET" in last, last
