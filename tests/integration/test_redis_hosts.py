"""Across hosts through Redis: gathers, replayed entries, a killed broker link, a full buffer and
``cluster-ctl``. Two clusters on one Redis with one name stand in for two hosts."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask_cluster.master import entries
from flask_cluster.master.broker_link import host_key, stream_key
from tests.conftest import ClusterProcess, StartCluster, wait_until
from tests.integration.test_redis import APP, RedisServer, pytestmark, redis_server, wait_for_states
from tests.ops_apps.client import ctl_ok, status

__all__ = ["pytestmark", "redis_server"]  # the skip when redis-server is missing; the fixture

Servers = Callable[..., RedisServer]


def host(cluster: ClusterProcess, sock: Path, seen: int = 2) -> dict[str, Any]:
    """The broker's status once this host sees ``seen`` hosts (itself included)."""
    broker: dict[str, Any] = {}

    def sees() -> bool:
        nonlocal broker
        broker = status(sock)["master"]["broker"]
        return len(broker["hosts_seen"]) == seen

    wait_until(sees, 30, interval=0.2, message=lambda: f"{seen} hosts seen in {broker}")
    return broker


def start_host(start_cluster: StartCluster, server: RedisServer, sock: Path, *options: str,
               workers: int = 2) -> ClusterProcess:
    return start_cluster(APP, "--broker", server.url, "--cluster-name", "hosts",
                         "--control-socket", str(sock), *options, workers=workers)


def two_hosts(start_cluster: StartCluster, server: RedisServer,
              tmp_path: Path) -> tuple[ClusterProcess, ClusterProcess]:
    """Two clusters, ``one.sock`` and ``two.sock``, once each sees the other."""
    one = start_host(start_cluster, server, tmp_path / "one.sock")
    two = start_host(start_cluster, server, tmp_path / "two.sock")
    host(one, tmp_path / "one.sock")
    host(two, tmp_path / "two.sock")
    return one, two


def test_gather_answers_come_from_every_worker_of_both_hosts_and_a_dead_host_is_named(
        start_cluster: StartCluster, redis_server: Servers, tmp_path: Path) -> None:
    one, two = two_hosts(start_cluster, redis_server(), tmp_path)
    two_id = host(two, tmp_path / "two.sock")["host"]

    def every_worker() -> list[int] | None:
        reply = one.request("/gather/pid?timeout=5")
        pids: list[int] = reply.json()["replies"] if reply.status == 200 else []
        return pids if len(pids) == 4 else None

    replies = wait_until(every_worker, 30, interval=0.2)
    ones, twos = list(one.ready_pids.values()), list(two.ready_pids.values())
    assert sorted(replies) == sorted(ones + twos)
    assert set(replies[:2]) == set(ones)  # this host's first

    os.killpg(two.pgid, signal.SIGKILL)  # a host that dies: its key lives on for its TTL
    incomplete = one.get_json("/gather/pid?timeout=1", expect=504)
    assert incomplete["missing_hosts"] == {two_id: [0, 1]}
    assert incomplete["missing"] == [] and len(incomplete["replies"]) == 2


def test_a_host_that_stops_is_named_missing_until_its_key_expires_then_waited_for_no_more(
        start_cluster: StartCluster, redis_server: Servers, tmp_path: Path) -> None:
    server = redis_server()
    one, two = two_hosts(start_cluster, server, tmp_path)
    two_id = host(two, tmp_path / "two.sock")["host"]

    two.stop()  # graceful: returns once its process group is gone, the broker link included

    incomplete = one.get_json("/gather/pid?timeout=1", expect=504)
    assert incomplete["missing_hosts"] == {two_id: [0, 1]}
    assert len(incomplete["replies"]) == 2
    client = server.client()
    wait_until(lambda: not client.exists(host_key("hosts", two_id)), 15, interval=0.2,
               message="the stopped host's key to expire")
    host(one, tmp_path / "one.sock", seen=1)
    assert len(one.get_json("/gather/pid?timeout=5")["replies"]) == 2


def test_a_signed_entry_copied_back_into_the_stream_runs_no_handler(
        start_cluster: StartCluster, redis_server: Servers, tmp_path: Path) -> None:
    server = redis_server()
    one, two = two_hosts(start_cluster, server, tmp_path)
    one.get_json("/broadcast/number?n=1", "POST")
    wait_for_states(one, lambda state: state["numbers"] == [0], 30, workers=4)

    client = server.client()
    [original] = [entry for _id, fields in client.xrange(stream_key("hosts"))
                  if (entry := entries.parse_entry(fields)) and entry.topic == "number"]
    for copy in (1, 2):  # as a new host's entry: the masters' own numbering lets it through
        client.xadd(stream_key("hosts"), entries.broadcast_fields(
            b"replayer-%d" % copy, 1, original.topic, original.payload, None))
    two.get_json("/broadcast/number?n=2", "POST")  # 0 and 1, after the copies in the stream

    states = wait_for_states(one, lambda state: len(state["numbers"]) >= 3, 30, workers=4)
    assert all(state["numbers"] == [0, 0, 1] for state in states)
    for cluster in (one, two):  # each worker logs the first copy and counts the rest
        assert cluster.log().count("a copy of one already run") == 2, cluster.log()


def test_the_broker_link_killed_mid_stream_is_restarted_and_nothing_is_lost_or_doubled(
        start_cluster: StartCluster, redis_server: Servers, tmp_path: Path) -> None:
    server = redis_server()
    one, two = two_hosts(start_cluster, server, tmp_path)
    link = host(one, tmp_path / "one.sock")["link_pid"]
    client = server.client()
    count = 1500

    senders = [threading.Thread(target=cluster.get_json, args=(
        f"/broadcast/order?tag={tag}&n={count}", "POST"), kwargs={"timeout": 120})
        for cluster, tag in ((one, "a"), (two, "b"))]
    for sender in senders:
        sender.start()
    wait_until(lambda: client.xlen(stream_key("hosts")) >= 300, 60)
    os.kill(link, signal.SIGKILL)
    for sender in senders:
        sender.join(120)

    states = wait_for_states(one, lambda state: len(state["ordered"]) >= 2 * count, 120, workers=4)
    first = states[0]["ordered"]
    for state in states:
        assert state["ordered"] == first, f"worker pid {state['pid']}"
    for tag in ("a", "b"):
        assert [item for item in first if item[0] == tag] == [[tag, i] for i in range(count)]
    broker = status(tmp_path / "one.sock")["master"]["broker"]
    assert broker["link_restarts"] == 1 and broker["link_pid"] != link
    assert f"the broker link (pid {link}) is gone" in one.log()


def test_past_the_buffer_bound_broadcast_raises_in_the_view_and_the_buffered_arrive_once(
        start_cluster: StartCluster, redis_server: Servers, tmp_path: Path) -> None:
    server = redis_server(durable=True)
    one = start_host(start_cluster, server, tmp_path / "one.sock", "--broker-buffer", "50")
    wait_for_states(one, lambda state: True, 30)
    server.stop()
    wait_until(lambda: "lost while" in one.log(), 15)

    sent = 0
    while sent < 500:  # one broadcast per request: a 500 sent none, a 200 sent exactly one
        reply = one.request(f"/broadcast/order?tag=a&from={sent}&n=1", "POST")
        if reply.status != 200:
            break
        sent += 1
    assert reply.status == 500 and 50 <= sent < 500, (reply.status, sent)
    assert "BrokerBufferFull" in one.log()
    assert status(tmp_path / "one.sock")["master"]["broker"]["full"]

    server.start()
    wait_until(lambda: one.request(f"/broadcast/order?tag=a&from={sent}&n=1", "POST").status
               == 200, 60, interval=0.2)
    states = wait_for_states(one, lambda state: len(state["ordered"]) > sent, 60)
    for state in states:
        assert state["ordered"] == [["a", i] for i in range(sent + 1)]


def test_cluster_ctl_broadcasts_to_every_host_and_shows_the_broker(
        start_cluster: StartCluster, redis_server: Servers, tmp_path: Path) -> None:
    _one, two = two_hosts(start_cluster, redis_server(), tmp_path)

    out = ctl_ok("broadcast", "number", "--data", "7", control_socket=tmp_path / "one.sock")
    assert "2 workers" in out

    states = wait_for_states(two, lambda state: state["numbers"], 30, workers=4)
    assert all(state["numbers"] == [7] for state in states)
    table = ctl_ok("status", control_socket=tmp_path / "one.sock")
    assert "connected" in table and "hosts seen 2:" in table and "buffered 0" in table
