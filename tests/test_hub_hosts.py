"""Gathers across hosts, with two hubs joined by an in-memory stand-in for the broker."""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask_cluster import wire
from flask_cluster.master.hub import Answered, Asked, Deliver, Hub


@dataclass(eq=False)
class Peer:
    worker_id: int
    pid: int


class Network:
    """Hosts by name; what one host says reaches the others at once, unless it is cut off."""

    def __init__(self) -> None:
        self.relays: dict[str, Relay] = {}
        self.cut: set[str] = set()


class Relay:
    def __init__(self, network: Network, name: str, workers: list[int]) -> None:
        self.network, self.name, self.workers = network, name, workers
        network.relays[name] = self
        self.asked: Asked | None = None
        self.answered: Answered | None = None

    def publish(self, topic: str, payload: bytes, skip: int | None) -> None:
        raise AssertionError("no broadcasts here")

    def bind(self, asked: Asked, answered: Answered) -> None:
        self.asked, self.answered = asked, answered

    def hosts(self) -> dict[str, list[int]]:
        return {name: relay.workers for name, relay in self.network.relays.items()
                if name != self.name}

    def ask(self, gather_id: int, topic: str, payload: bytes, deadline: float) -> None:
        for name, relay in self.network.relays.items():
            if name != self.name and name not in self.network.cut:
                assert relay.asked is not None
                relay.asked(self.name, gather_id, topic, payload, deadline)

    def answer(self, host: str, gather_id: int, answers: list[wire.WireAnswer]) -> None:
        answered = self.network.relays[host].answered
        assert answered is not None
        answered(self.name, gather_id, answers)


class Host:
    def __init__(self, network: Network, name: str, pids: list[int]) -> None:
        self.peers = [Peer(index, pid) for index, pid in enumerate(pids)]
        self.sent: list[tuple[Peer, wire.Message]] = []

        def relay(_deliver: Deliver) -> Relay:
            return Relay(network, name, [peer.worker_id for peer in self.peers])

        self.hub = Hub(lambda peer, frame: self.sent.append((peer, wire.decode(frame))),
                       lambda: self.peers, relay)

    def answer_every_ask(self) -> None:
        for peer, message in list(self.sent):
            if isinstance(message, wire.Ask):
                self.hub.receive(peer, wire.Reply(message.gather_id, wire.OK, b"%d" % peer.pid))

    def gathered(self) -> list[wire.Gathered]:
        return [message for _, message in self.sent if isinstance(message, wire.Gathered)]


def test_a_gather_waits_for_every_worker_of_every_host_and_names_their_host() -> None:
    network = Network()
    one, two = Host(network, "one", [100, 101]), Host(network, "two", [200, 201])

    one.hub.receive(one.peers[0], wire.Gather(7, "pid", b"q", 5.0))
    two.answer_every_ask()
    assert one.gathered() == []  # still waiting for its own workers
    one.answer_every_ask()

    [gathered] = one.gathered()
    assert gathered.request_id == 7
    assert gathered.answers == [(0, 100, wire.OK, b"100", ""), (1, 101, wire.OK, b"101", ""),
                                (0, 200, wire.OK, b"200", "two"), (1, 201, wire.OK, b"201", "two")]
    assert two.gathered() == []  # the answers went to the asking host only


def test_a_silent_host_is_reported_missing_by_name_at_the_deadline() -> None:
    network = Network()
    one, _two = Host(network, "one", [100]), Host(network, "two", [200, 201])
    network.cut.add("two")

    one.hub.receive(one.peers[0], wire.Gather(1, "pid", b"q", 0.5))
    one.answer_every_ask()
    assert one.gathered() == []
    one.hub.expire(time.monotonic() + 1)

    [gathered] = one.gathered()
    assert gathered.answers == [(0, 100, wire.OK, b"100", ""),
                                (0, 0, wire.MISSING, None, "two"), (1, 0, wire.MISSING, None, "two")]


def test_a_question_whose_asker_gave_up_is_not_put_to_the_workers() -> None:
    network = Network()
    one, two = Host(network, "one", [100]), Host(network, "two", [200])
    assert two.hub is not None and one.hub is not None

    relay = network.relays["two"]
    assert relay.asked is not None
    relay.asked("one", 3, "pid", b"q", time.time() - 1)

    assert two.sent == []
