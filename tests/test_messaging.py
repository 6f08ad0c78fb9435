"""The worker's message client, with the master's end of its channel played by the test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_cluster import FlaskCluster, ipc, signing, wire
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


KEY = b"test-key"


@pytest.fixture
def signed(cluster: FlaskCluster) -> Iterator[tuple[ipc.MessageChannel, WorkerMessenger,
                                                    list[bool]]]:
    """A worker of a cluster with a broker: it signs and checks with ``KEY``; the list says
    whether the master's buffer for the broker is full."""
    master_msg, worker_msg, master_fd, worker_fd = ipc.channel_pairs()
    master_fd.close()
    worker_fd.close()
    app = Flask("signed_messaging_test_app")
    cluster.init_app(app)
    full = [False]
    messenger = WorkerMessenger(ipc.MessageChannel(worker_msg), 0, app, cluster, signing_key=KEY,
                                broker_full=lambda: full[0])
    master = ipc.MessageChannel(master_msg)
    yield master, messenger, full
    master.close()
    messenger.channel.close()


def test_a_signed_broadcast_copied_under_another_number_runs_once(
        cluster: FlaskCluster, signed: tuple[ipc.MessageChannel, WorkerMessenger, list[bool]]) -> None:
    master, messenger, _full = signed
    ran: list[Any] = []
    cluster.on("t")(ran.append)
    stamper = signing.Stamper()
    first = signing.sign(KEY, signing.BROADCAST, "t", wire.pack(1), stamper.next(signing.BROADCAST))
    second = signing.sign(KEY, signing.BROADCAST, "t", wire.pack(2), stamper.next(signing.BROADCAST))

    send(master, messenger, wire.Deliver(1, "t", first), wire.Deliver(2, "t", first),
         wire.Deliver(3, "t", second), wire.Deliver(4, "t", first))

    assert ran == [1, 2]
    assert messenger.replayed == 2 and messenger.rejected == 0


def test_with_the_brokers_buffer_full_broadcast_raises_and_sends_nothing(
        signed: tuple[ipc.MessageChannel, WorkerMessenger, list[bool]]) -> None:
    master, messenger, full = signed
    full[0] = True

    with pytest.raises(wire.BrokerBufferFull, match="--broker-buffer"):
        messenger.broadcast("t", wire.pack(1), True)

    full[0] = False
    messenger.broadcast("t", wire.pack(2), True)
    [sent] = [wire.decode(frame) for frame in master.receive()]
    assert isinstance(sent, wire.Broadcast)
    checked = signing.verify(KEY, signing.BROADCAST, "t", sent.payload)
    assert checked is not None and wire.unpack(checked[1]) == 2


def test_a_publish_from_the_master_is_signed_and_broadcast_by_the_worker(
        signed: tuple[ipc.MessageChannel, WorkerMessenger, list[bool]]) -> None:
    master, messenger, _full = signed

    send(master, messenger, wire.Publish("cache-clear", wire.pack("users")))

    [sent] = [wire.decode(frame) for frame in master.receive()]
    assert isinstance(sent, wire.Broadcast) and sent.include_self
    checked = signing.verify(KEY, signing.BROADCAST, "cache-clear", sent.payload)
    assert checked is not None and wire.unpack(checked[1]) == "users"


def test_an_answer_signed_with_another_key_is_an_error_not_unpickled(
        signed: tuple[ipc.MessageChannel, WorkerMessenger, list[bool]]) -> None:
    _master, messenger, _full = signed
    stamp = signing.Stamper().next(signing.REPLY)
    good = signing.sign(KEY, signing.REPLY, "", wire.pack("fine"), stamp)
    forged = signing.sign(b"other", signing.REPLY, "", wire.pack("evil"), stamp)

    assert messenger._answer((0, 10, wire.OK, good, "b")) == wire.Answer(0, 10, wire.OK, "fine", "b")
    assert messenger._answer((1, 11, wire.OK, forged, "b")) == wire.Answer(
        1, 11, wire.ERROR, "reply dropped: its signature is missing or wrong", "b")


def test_with_threads_broadcasts_leave_in_the_order_of_their_stamps(
        signed: tuple[ipc.MessageChannel, WorkerMessenger, list[bool]]) -> None:
    master, messenger, _full = signed
    stamped, b_sent = threading.Event(), threading.Event()
    stamp = messenger._stamper.next

    def stamp_then_stall(purpose: bytes) -> signing.Stamp:
        result = stamp(purpose)
        if result.counter == 1:  # thread A holds stamp 1 and has not sent it yet
            stamped.set()
            assert not b_sent.wait(0.5), "B's broadcast overtook A's: its stamp would be 2 first"
        return result

    messenger._stamper.next = stamp_then_stall  # type: ignore[method-assign]
    a = threading.Thread(target=messenger.broadcast, args=("t", wire.pack("a"), True))
    a.start()
    assert stamped.wait(5)
    b = threading.Thread(target=lambda: (messenger.broadcast("t", wire.pack("b"), True),
                                         b_sent.set()))
    b.start()
    a.join(5)
    b.join(5)

    sent = [wire.decode(frame) for frame in master.receive()]
    counters = [signing.verify(KEY, signing.BROADCAST, "t", message.payload)[0].counter  # type: ignore[index, union-attr]
                for message in sent]
    assert counters == [1, 2]
