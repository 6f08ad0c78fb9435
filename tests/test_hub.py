"""The master's message hub, with a recorder in place of the channels."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pytest

from flask_cluster import wire
from flask_cluster.master.hub import Deliver, Hub, LocalRelay


@dataclass(eq=False)
class Peer:
    worker_id: int
    pid: int


class Recorder:
    """The hub's ``send``: what each worker would receive, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[Peer, wire.Message]] = []

    def __call__(self, peer: Peer, frame: bytes) -> None:
        self.sent.append((peer, wire.decode(frame)))

    def to(self, peer: Peer) -> list[wire.Message]:
        return [message for target, message in self.sent if target is peer]

    def take(self) -> list[tuple[Peer, wire.Message]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def peers() -> list[Peer]:
    return [Peer(0, 1000), Peer(1, 1001), Peer(2, 1002)]


@pytest.fixture
def live(peers: list[Peer]) -> list[Peer]:
    """The workers that receive messages now; a test changes it in place."""
    return list(peers)


@pytest.fixture
def sent() -> Recorder:
    return Recorder()


@pytest.fixture
def hub(sent: Recorder, live: list[Peer]) -> Hub:
    return Hub(sent, lambda: live)


# -- broadcast ------------------------------------------------------------------------------------


def test_broadcast_reaches_every_worker_sender_included(hub: Hub, sent: Recorder,
                                                        peers: list[Peer]) -> None:
    hub.receive(peers[1], wire.Broadcast("cache-clear", b"payload", True))

    assert [peer for peer, _ in sent.sent] == peers
    assert {message for _, message in sent.sent} == {
        wire.Deliver(1, "cache-clear", b"payload")}  # one frame, one sequence number


def test_broadcast_without_self_skips_the_sender(hub: Hub, sent: Recorder,
                                                 peers: list[Peer]) -> None:
    hub.receive(peers[1], wire.Broadcast("t", b"x", False))

    assert [peer.worker_id for peer, _ in sent.sent] == [0, 2]


def test_every_worker_sees_broadcasts_in_one_order(hub: Hub, sent: Recorder,
                                                   peers: list[Peer]) -> None:
    for i, sender in enumerate([peers[2], peers[0], peers[1], peers[2]]):
        hub.receive(sender, wire.Broadcast(f"topic-{i}", b"%d" % i, True))
    hub.publish("from-ctl", b"ctl")

    orders = [sent.to(peer) for peer in peers]
    assert orders[0] == orders[1] == orders[2]
    assert [message.topic for message in orders[0]] == [  # type: ignore[union-attr]
        "topic-0", "topic-1", "topic-2", "topic-3", "from-ctl"]
    assert [message.seq for message in orders[0]] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]


def test_publish_counts_its_receivers(hub: Hub, live: list[Peer]) -> None:
    assert hub.publish("t", b"x") == 3
    live.clear()
    assert hub.publish("t", b"x") == 0


def test_payload_is_forwarded_as_bytes(hub: Hub, sent: Recorder, peers: list[Peer]) -> None:
    payload = b"\x80\x05not-unpickled-by-the-master"
    hub.receive(peers[0], wire.Broadcast("t", payload, True))

    assert all(message.payload == payload for _, message in sent.sent)  # type: ignore[union-attr]


class ParkedRelay:
    """A relay that delivers only when told, the way one through a shared log would."""

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.published: list[tuple[str, bytes, int | None]] = []

    def publish(self, topic: str, payload: bytes, skip: int | None) -> None:
        self.published.append((topic, payload, skip))


def test_a_relay_decides_when_and_with_what_number_a_broadcast_is_delivered(
        sent: Recorder, peers: list[Peer]) -> None:
    made: list[ParkedRelay] = []

    def parked(deliver: Deliver) -> ParkedRelay:
        made.append(ParkedRelay(deliver))
        return made[-1]

    hub = Hub(sent, lambda: peers, parked)
    [relay] = made

    hub.receive(peers[0], wire.Broadcast("t", b"x", False))
    assert sent.sent == []  # published, not delivered yet
    assert relay.published == [("t", b"x", 1000)]

    relay.deliver(41, "t", b"x", 1000)
    assert [(peer.worker_id, message) for peer, message in sent.sent] == [
        (1, wire.Deliver(41, "t", b"x")), (2, wire.Deliver(41, "t", b"x"))]


def test_the_local_relay_numbers_from_one() -> None:
    delivered: list[int] = []
    relay = LocalRelay(lambda seq, *_: delivered.append(seq))
    for _ in range(3):
        relay.publish("t", b"", None)
    assert delivered == [1, 2, 3]


# -- gather ---------------------------------------------------------------------------------------


def ask(hub: Hub, sent: Recorder, asker: Peer, timeout: float = 2.0, request_id: int = 7) -> int:
    """Start a gather; the gather id the workers were asked with."""
    hub.receive(asker, wire.Gather(request_id, "pid", b"question", timeout))
    questions = [message for _, message in sent.take() if isinstance(message, wire.Ask)]
    assert len({message.gather_id for message in questions}) == 1
    gather_id, topic, payload = questions[0]
    assert (topic, payload) == ("pid", b"question")
    return gather_id


def reply(hub: Hub, peer: Peer, gather_id: int, value: bytes | None = None,
          status: wire.Status = wire.OK) -> None:
    hub.receive(peer, wire.Reply(gather_id, status, value or b"from %d" % peer.worker_id))


def gathered(sent: Recorder) -> list[tuple[Peer, wire.Gathered]]:
    return [(peer, message) for peer, message in sent.take()
            if isinstance(message, wire.Gathered)]


def test_gather_asks_everyone_and_answers_in_worker_id_order(hub: Hub, sent: Recorder,
                                                             peers: list[Peer]) -> None:
    asker = peers[1]
    hub.receive(asker, wire.Gather(42, "pid", b"question", 2.0))
    asked = sent.take()
    assert [peer for peer, _ in asked] == peers
    gather_id = asked[0][1].gather_id  # type: ignore[union-attr]

    reply(hub, peers[2], gather_id)
    reply(hub, peers[0], gather_id, status=wire.ERROR, value=b"ValueError: no")
    assert gathered(sent) == []  # not complete yet
    reply(hub, peers[1], gather_id)

    [(to, (request_id, answers))] = gathered(sent)
    assert to is asker
    assert request_id == 42
    assert answers == [(0, 1000, wire.ERROR, b"ValueError: no", ""), (1, 1001, wire.OK, b"from 1", ""),
                       (2, 1002, wire.OK, b"from 2", "")]
    assert hub.next_deadline() is None  # nothing pending


def test_gather_with_nobody_to_ask_answers_at_once(hub: Hub, sent: Recorder, peers: list[Peer],
                                                   live: list[Peer]) -> None:
    live.clear()
    hub.receive(peers[0], wire.Gather(1, "t", b"x", 2.0))

    assert gathered(sent) == [(peers[0], wire.Gathered(1, []))]


def test_gather_expiry_reports_the_missing(hub: Hub, sent: Recorder, peers: list[Peer]) -> None:
    started = time.monotonic()
    gather_id = ask(hub, sent, peers[0], timeout=2.0)
    reply(hub, peers[0], gather_id)
    reply(hub, peers[2], gather_id)

    deadline = hub.next_deadline()
    assert deadline is not None
    assert started + 2.0 <= deadline <= time.monotonic() + 2.0
    hub.expire(deadline - 0.001)
    assert gathered(sent) == []

    hub.expire(deadline)
    [(_, (_, answers))] = gathered(sent)
    assert answers == [(0, 1000, wire.OK, b"from 0", ""), (1, 1001, wire.MISSING, None, ""),
                       (2, 1002, wire.OK, b"from 2", "")]

    reply(hub, peers[1], gather_id)  # too late: ignored, no second answer
    assert gathered(sent) == []


def test_worker_gone_is_reported_missing(hub: Hub, sent: Recorder, peers: list[Peer]) -> None:
    gather_id = ask(hub, sent, peers[0])
    reply(hub, peers[0], gather_id)
    reply(hub, peers[1], gather_id)

    hub.worker_gone(peers[2])

    [(_, (_, answers))] = gathered(sent)
    assert answers[2] == (2, 1002, wire.MISSING, None, "")


def test_worker_gone_after_answering_keeps_its_answer(hub: Hub, sent: Recorder,
                                                      peers: list[Peer]) -> None:
    gather_id = ask(hub, sent, peers[0])
    reply(hub, peers[2], gather_id)

    hub.worker_gone(peers[2])
    reply(hub, peers[0], gather_id)
    reply(hub, peers[1], gather_id)

    [(_, (_, answers))] = gathered(sent)
    assert answers[2] == (2, 1002, wire.OK, b"from 2", "")


def test_asker_gone_drops_its_gather(hub: Hub, sent: Recorder, peers: list[Peer]) -> None:
    gather_id = ask(hub, sent, peers[0])

    hub.worker_gone(peers[0])
    for peer in peers[1:]:
        reply(hub, peer, gather_id)
    hub.expire(time.monotonic() + 60)

    assert gathered(sent) == []
    assert hub.next_deadline() is None


def test_reply_from_a_worker_not_asked_is_ignored(hub: Hub, sent: Recorder, peers: list[Peer],
                                                  live: list[Peer]) -> None:
    live.remove(peers[2])
    gather_id = ask(hub, sent, peers[0])
    newcomer = peers[2]  # spawned after the question went out

    reply(hub, newcomer, gather_id)
    reply(hub, peers[0], gather_id)
    reply(hub, peers[1], gather_id)

    [(_, (_, answers))] = gathered(sent)
    assert [answer[0] for answer in answers] == [0, 1]


def test_concurrent_gathers_stay_apart(hub: Hub, sent: Recorder, peers: list[Peer]) -> None:
    first = ask(hub, sent, peers[0], request_id=1)
    second = ask(hub, sent, peers[1], request_id=1)  # request ids are per asker
    assert first != second

    for peer in peers:
        reply(hub, peer, second, value=b"second")
    [(to, (_, answers))] = gathered(sent)
    assert to is peers[1]
    assert {answer[3] for answer in answers} == {b"second"}

    for peer in peers:
        reply(hub, peer, first, value=b"first")
    [(to, (_, answers))] = gathered(sent)
    assert to is peers[0]
    assert {answer[3] for answer in answers} == {b"first"}


def test_next_deadline_is_the_earliest(hub: Hub, sent: Recorder, peers: list[Peer]) -> None:
    assert hub.next_deadline() is None
    ask(hub, sent, peers[0], timeout=5.0)
    ask(hub, sent, peers[1], timeout=1.0)

    deadline = hub.next_deadline()

    assert deadline is not None and deadline <= time.monotonic() + 1.0


def test_a_message_not_for_the_hub_is_logged(hub: Hub, sent: Recorder, peers: list[Peer],
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_cluster.master"):
        hub.receive(peers[2], wire.Deliver(1, "t", b""))

    assert sent.sent == []
    assert "unexpected Deliver from worker 2" in caplog.text
