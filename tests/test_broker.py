"""The master's side of ``broadcast`` and ``gather``, with a recorder in place of the channels."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pytest

from flask_cluster import ipc, runtime
from flask_cluster.broker import Broker


@dataclass(eq=False)
class Peer:
    worker_id: int
    pid: int
    channel: Any = None


class Recorder:
    """The broker's ``send``: what each worker would receive, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[Peer, str, tuple[Any, ...]]] = []

    def __call__(self, peer: Peer, frame: bytes) -> None:
        kind, args = ipc.decode(frame)
        self.sent.append((peer, kind, args))

    def to(self, peer: Peer) -> list[tuple[str, tuple[Any, ...]]]:
        return [(kind, args) for target, kind, args in self.sent if target is peer]

    def take(self) -> list[tuple[Peer, str, tuple[Any, ...]]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def peers() -> list[Peer]:
    return [Peer(0, 1000), Peer(1, 1001), Peer(2, 1002)]


@pytest.fixture
def sent() -> Recorder:
    return Recorder()


@pytest.fixture
def broker(sent: Recorder) -> Broker:
    return Broker(sent)


# -- broadcast ------------------------------------------------------------------------------------


def test_broadcast_reaches_every_worker_sender_included(broker: Broker, sent: Recorder,
                                                        peers: list[Peer]) -> None:
    broker.receive(peers[1], ipc.BROADCAST, ("cache-clear", b"payload", True), peers)

    assert [peer for peer, _, _ in sent.sent] == peers
    assert {(kind, args) for _, kind, args in sent.sent} == {
        (ipc.BROADCAST, (1, "cache-clear", b"payload"))}  # one frame, one sequence number


def test_broadcast_without_self_skips_the_sender(broker: Broker, sent: Recorder,
                                                 peers: list[Peer]) -> None:
    broker.receive(peers[1], ipc.BROADCAST, ("t", b"x", False), peers)

    assert [peer.worker_id for peer, _, _ in sent.sent] == [0, 2]


def test_every_worker_sees_broadcasts_in_one_order(broker: Broker, sent: Recorder,
                                                   peers: list[Peer]) -> None:
    for i, sender in enumerate([peers[2], peers[0], peers[1], peers[2]]):
        broker.receive(sender, ipc.BROADCAST, (f"topic-{i}", b"%d" % i, True), peers)
    broker.publish("from-ctl", b"ctl", peers)

    orders = [[args for _, args in sent.to(peer)] for peer in peers]
    assert orders[0] == orders[1] == orders[2]
    assert [seq for seq, _, _ in orders[0]] == [1, 2, 3, 4, 5]
    assert [topic for _, topic, _ in orders[0]] == [
        "topic-0", "topic-1", "topic-2", "topic-3", "from-ctl"]


def test_publish_counts_its_receivers(broker: Broker, sent: Recorder, peers: list[Peer]) -> None:
    assert broker.publish("t", b"x", peers) == 3
    assert broker.publish("t", b"x", []) == 0


def test_payload_is_forwarded_as_bytes(broker: Broker, sent: Recorder, peers: list[Peer]) -> None:
    payload = b"\x80\x05not-unpickled-by-the-master"
    broker.receive(peers[0], ipc.BROADCAST, ("t", payload, True), peers)

    assert all(args[2] == payload for _, _, args in sent.sent)


# -- gather ---------------------------------------------------------------------------------------


def ask(broker: Broker, sent: Recorder, asker: Peer, live: list[Peer], timeout: float = 2.0,
        request_id: int = 7) -> int:
    """Start a gather; the gather id the workers were asked with."""
    broker.receive(asker, ipc.GATHER, (request_id, "pid", b"question", timeout), live)
    questions = [args for _, kind, args in sent.take() if kind == ipc.GATHER]
    assert len(questions) == len(live)
    assert len({args[0] for args in questions}) == 1
    gather_id, topic, payload = questions[0]
    assert (topic, payload) == ("pid", b"question")
    return int(gather_id)


def reply(broker: Broker, peer: Peer, gather_id: int, live: list[Peer], value: bytes | None = None,
          status: str = runtime.OK) -> None:
    broker.receive(peer, ipc.REPLY, (gather_id, status, value or b"from %d" % peer.worker_id), live)


def gathered(sent: Recorder) -> list[tuple[Peer, tuple[Any, ...]]]:
    return [(peer, args) for peer, kind, args in sent.take() if kind == ipc.GATHERED]


def test_gather_asks_everyone_and_answers_in_worker_id_order(broker: Broker, sent: Recorder,
                                                             peers: list[Peer]) -> None:
    asker = peers[1]
    gather_id = ask(broker, sent, asker, peers, request_id=42)

    reply(broker, peers[2], gather_id, peers)
    reply(broker, peers[0], gather_id, peers, status=runtime.ERROR, value=b"ValueError: no")
    assert gathered(sent) == []  # not complete yet
    reply(broker, peers[1], gather_id, peers)

    [(to, (request_id, answers))] = gathered(sent)
    assert to is asker
    assert request_id == 42
    assert answers == [(0, 1000, runtime.ERROR, b"ValueError: no"), (1, 1001, runtime.OK, b"from 1"),
                       (2, 1002, runtime.OK, b"from 2")]
    assert broker.next_deadline() is None  # nothing pending


def test_gather_with_nobody_to_ask_answers_at_once(broker: Broker, sent: Recorder,
                                                   peers: list[Peer]) -> None:
    broker.receive(peers[0], ipc.GATHER, (1, "t", b"x", 2.0), [])

    assert gathered(sent) == [(peers[0], (1, []))]


def test_gather_expiry_reports_the_missing(broker: Broker, sent: Recorder,
                                           peers: list[Peer]) -> None:
    started = time.monotonic()
    gather_id = ask(broker, sent, peers[0], peers, timeout=2.0)
    reply(broker, peers[0], gather_id, peers)
    reply(broker, peers[2], gather_id, peers)

    deadline = broker.next_deadline()
    assert deadline is not None
    assert started + 2.0 <= deadline <= time.monotonic() + 2.0
    broker.expire(deadline - 0.001)
    assert gathered(sent) == []

    broker.expire(deadline)
    [(_, (_, answers))] = gathered(sent)
    assert answers == [(0, 1000, runtime.OK, b"from 0"), (1, 1001, runtime.MISSING, None),
                       (2, 1002, runtime.OK, b"from 2")]

    reply(broker, peers[1], gather_id, peers)  # too late: ignored, no second answer
    assert gathered(sent) == []


def test_worker_gone_is_reported_missing(broker: Broker, sent: Recorder, peers: list[Peer]) -> None:
    gather_id = ask(broker, sent, peers[0], peers)
    reply(broker, peers[0], gather_id, peers)
    reply(broker, peers[1], gather_id, peers)

    broker.worker_gone(peers[2])

    [(_, (_, answers))] = gathered(sent)
    assert answers[2] == (2, 1002, runtime.MISSING, None)


def test_worker_gone_after_answering_keeps_its_answer(broker: Broker, sent: Recorder,
                                                      peers: list[Peer]) -> None:
    gather_id = ask(broker, sent, peers[0], peers)
    reply(broker, peers[2], gather_id, peers)

    broker.worker_gone(peers[2])
    reply(broker, peers[0], gather_id, peers)
    reply(broker, peers[1], gather_id, peers)

    [(_, (_, answers))] = gathered(sent)
    assert answers[2] == (2, 1002, runtime.OK, b"from 2")


def test_asker_gone_drops_its_gather(broker: Broker, sent: Recorder, peers: list[Peer]) -> None:
    gather_id = ask(broker, sent, peers[0], peers)

    broker.worker_gone(peers[0])
    for peer in peers[1:]:
        reply(broker, peer, gather_id, peers)
    broker.expire(time.monotonic() + 60)

    assert gathered(sent) == []
    assert broker.next_deadline() is None


def test_reply_from_a_worker_not_asked_is_ignored(broker: Broker, sent: Recorder,
                                                  peers: list[Peer]) -> None:
    gather_id = ask(broker, sent, peers[0], peers[:2])
    newcomer = peers[2]  # spawned after the question went out

    reply(broker, newcomer, gather_id, peers)
    reply(broker, peers[0], gather_id, peers)
    reply(broker, peers[1], gather_id, peers)

    [(_, (_, answers))] = gathered(sent)
    assert [answer[0] for answer in answers] == [0, 1]


def test_concurrent_gathers_stay_apart(broker: Broker, sent: Recorder, peers: list[Peer]) -> None:
    first = ask(broker, sent, peers[0], peers, request_id=1)
    second = ask(broker, sent, peers[1], peers, request_id=1)  # request ids are per asker
    assert first != second

    for peer in peers:
        reply(broker, peer, second, peers, value=b"second")
    [(to, (_, answers))] = gathered(sent)
    assert to is peers[1]
    assert {answer[3] for answer in answers} == {b"second"}

    for peer in peers:
        reply(broker, peer, first, peers, value=b"first")
    [(to, (_, answers))] = gathered(sent)
    assert to is peers[0]
    assert {answer[3] for answer in answers} == {b"first"}


def test_next_deadline_is_the_earliest(broker: Broker, sent: Recorder, peers: list[Peer]) -> None:
    assert broker.next_deadline() is None
    ask(broker, sent, peers[0], peers, timeout=5.0)
    ask(broker, sent, peers[1], peers, timeout=1.0)

    deadline = broker.next_deadline()

    assert deadline is not None and deadline <= time.monotonic() + 1.0


def test_unknown_message_is_logged(broker: Broker, sent: Recorder, peers: list[Peer],
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_cluster.master"):
        broker.receive(peers[2], "bogus", (), peers)

    assert sent.sent == []
    assert "unknown message 'bogus' from worker 2" in caplog.text
