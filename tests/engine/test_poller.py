"""The loop's poller gives what ``selectors`` gives, with ``epoll`` and without."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator

import pytest

from flask_cluster.worker.poller import EVENT_READ, EVENT_WRITE, Poller, SelectorsPoller

KINDS: list[Callable[[], Poller]] = [SelectorsPoller]
if hasattr(select, "epoll"):
    from flask_cluster.worker.poller import EpollPoller

    KINDS.append(EpollPoller)


@pytest.fixture(params=KINDS, ids=lambda kind: kind.__name__)
def poller(request: pytest.FixtureRequest) -> Iterator[Poller]:
    made = request.param()
    yield made
    made.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_ready_gives_data_and_the_registered_directions(
        poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, "a")
    assert poller.ready(0) == []
    b.send(b"x")
    assert poller.ready(1.0) == [("a", EVENT_READ)]
    poller.modify(a, EVENT_READ | EVENT_WRITE, "a2")
    assert poller.ready(1.0) == [("a2", EVENT_READ | EVENT_WRITE)]
    poller.modify(a, EVENT_WRITE, "a3")
    assert poller.ready(1.0) == [("a3", EVENT_WRITE)]


def test_a_hang_up_wakes_the_registered_direction(
        poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller.register(a, EVENT_WRITE, "a")
    b.close()
    assert poller.ready(1.0) == [("a", EVENT_WRITE)]
    poller.modify(a, EVENT_READ, "a")
    assert poller.ready(1.0) == [("a", EVENT_READ)]


def test_registered_twice_or_never_is_a_key_error(
        poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, None)
    with pytest.raises(KeyError):
        poller.register(a, EVENT_READ, None)
    with pytest.raises(KeyError):
        poller.modify(b, EVENT_READ, None)
    with pytest.raises(KeyError):
        poller.unregister(b)
    poller.unregister(a)
    with pytest.raises(KeyError):
        poller.unregister(a)


def test_a_closed_socket_can_be_unregistered_but_not_registered(
        poller: Poller, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, None)
    a.close()
    poller.unregister(a)
    b.close()
    with pytest.raises(ValueError):
        poller.register(b, EVENT_READ, None)
    assert poller.ready(0) == []
