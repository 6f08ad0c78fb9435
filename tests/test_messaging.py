"""The worker's message client, with the master's end of its channel played by the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_cluster import FlaskCluster, ipc, wire
from flask_cluster.worker.messenger import WorkerMessenger


@pytest.fixture
def cluster() -> FlaskCluster:
    return FlaskCluster()


@pytest.fixture
def channels(cluster: FlaskCluster) -> Iterator[tuple[ipc.MessageChannel, WorkerMessenger]]:
    master_msg, worker_msg, master_fd, worker_fd = ipc.channel_pairs()
    master_fd.close()
    worker_fd.close()
    app = Flask("messaging_test_app")
    cluster.init_app(app)
    master = ipc.MessageChannel(master_msg)
    messenger = WorkerMessenger(ipc.MessageChannel(worker_msg), 0, app, cluster)
    yield master, messenger
    master.close()
    messenger.channel.close()


def send(master: ipc.MessageChannel, messenger: WorkerMessenger, *messages: wire.Message) -> None:
    """Send ``messages`` and let the worker run them: a socket pair's sent bytes are at once
    in the peer's buffer, so one read takes them all."""
    for message in messages:
        master.queue(wire.encode(message))
    assert master.flush()
    messenger._on_readable()


def test_each_broadcast_runs_once_in_the_masters_order(
        cluster: FlaskCluster, channels: tuple[ipc.MessageChannel, WorkerMessenger]) -> None:
    master, messenger = channels
    ran: list[Any] = []
    cluster.on("t")(ran.append)

    send(master, messenger, *[wire.Deliver(seq, "t", wire.pack(seq)) for seq in (1, 2, 2, 1, 4)])

    assert ran == [1, 2, 4]  # 3 went to others only: numbers may skip, never go back
    assert messenger.last_seq == 4


def test_a_question_is_answered_with_the_reply(
        cluster: FlaskCluster, channels: tuple[ipc.MessageChannel, WorkerMessenger]) -> None:
    master, messenger = channels
    cluster.on("pid")(lambda _data: 1234)
    cluster.on("bad")(lambda _data: lambda: None)

    send(master, messenger, wire.Ask(5, "pid", wire.pack(None)), wire.Ask(6, "bad", wire.pack(None)))

    replies = [wire.decode(frame) for frame in master.receive()]
    assert replies[0] == wire.Reply(5, wire.OK, wire.pack(1234))
    assert isinstance(replies[1], wire.Reply) and replies[1].status == wire.ERROR
    assert "reply not sent: cannot pickle function" in wire.unpack(replies[1].payload)


def test_the_client_handles_every_kind_the_master_sends(
        channels: tuple[ipc.MessageChannel, WorkerMessenger]) -> None:
    _, messenger = channels

    assert set(messenger._handlers) == set(wire.FROM_MASTER)
