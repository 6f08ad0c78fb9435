"""Holding a connection while no worker has room (master/choice.py), without processes: the
choice itself, and the dispatcher's hold and release."""

from __future__ import annotations

import selectors
import socket

import pytest

from flask_cluster.master.choice import Choice
from flask_cluster.master.dispatch import Dispatcher
from tests.test_dispatch import Worker, ids, listener, run_once, workers

__all__ = ["listener", "workers"]  # fixtures, used by name


@pytest.mark.parametrize("balance", ["round-robin", "least-busy"])
def test_a_busy_worker_is_never_offered_while_holding(balance: str) -> None:
    # in_flight counts what a worker was passed and has not taken, as WorkerHandle does
    free, busy, waiting = Worker(0), Worker(1, in_flight=1), Worker(2, in_flight=1, passed=1)
    choice = Choice(balance, serving_blocks=True, queue_depth=0)

    assert [ids(choice.order([free, busy, waiting])) for _ in range(3)] == [[0]] * 3
    assert choice.order([busy, waiting]) == []  # hold it


def test_each_free_worker_gets_one_connection_of_a_batch() -> None:
    ready = [Worker(0), Worker(1), Worker(2, in_flight=1)]
    choice = Choice("round-robin", serving_blocks=True, queue_depth=0)

    assert ids(choice.order(ready, {0: 1})) == [1]
    assert choice.order(ready, {0: 1, 1: 1}) == []


def test_queue_depth_lets_that_many_wait_behind_a_request() -> None:
    busy = Worker(0, in_flight=1)
    choice = Choice("round-robin", serving_blocks=True, queue_depth=1)

    assert ids(choice.order([busy])) == [0]
    assert choice.order([busy], {0: 1}) == []


def test_a_stopping_cluster_passes_held_connections_to_busy_workers() -> None:
    busy = Worker(0, in_flight=1)
    choice = Choice("least-busy", serving_blocks=True, queue_depth=0)

    assert ids(choice.order([busy], holding=False)) == [0]


def test_threaded_workers_are_never_held_for() -> None:
    busy = Worker(0, in_flight=3)
    choice = Choice("round-robin", serving_blocks=False, queue_depth=0)

    assert ids(choice.order([busy])) == [0]


def test_dispatcher_holds_while_every_worker_is_busy_and_releases_when_one_is_free(
        listener: socket.socket, workers: list[Worker]) -> None:
    for worker in workers:
        worker.in_flight = 1
    held: list[int] = []
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: workers, pytest.fail,
                                serving_blocks=True, queue_depth=0, on_holding=held.append)
        dispatcher.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
        try:
            while len(dispatcher.waiting) < 2:
                run_once(selector, dispatcher)
            assert [len(worker.receive()) for worker in workers] == [0, 0, 0]
            assert held[-1] == 2  # the workers read this and say Free when they are

            workers[1].in_flight = 0  # ... as worker 1 just did
            dispatcher.retry()

            assert [len(worker.receive()) for worker in workers] == [0, 1, 0]
            assert held[-1] == 1
            assert dispatcher.paused  # the rest stays in the kernel's backlog meanwhile

            workers[2].in_flight = 0
            dispatcher.retry()

            assert [len(worker.receive()) for worker in workers] == [0, 0, 1]
            assert held[-1] == 0
            assert not dispatcher.paused
        finally:
            for client in clients:
                client.close()


def test_each_free_signal_earns_the_worker_one_held_connection(listener: socket.socket,
                                                               workers: list[Worker]) -> None:
    only = workers[0]
    only.in_flight, only.passed = 1, 1  # serving, and one it has not taken yet: no room
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [only], pytest.fail,
                                serving_blocks=True, queue_depth=0)
        dispatcher.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            while len(dispatcher.waiting) < 3:
                run_once(selector, dispatcher)
            dispatcher.retry()
            assert len(dispatcher.waiting) == 3  # no room on the scoreboard...

            dispatcher.worker_free(only)  # ...but each request it ends earns it one
            dispatcher.worker_free(only)

            assert len(only.receive()) == 2
            assert len(dispatcher.waiting) == 1
        finally:
            for client in clients:
                client.close()
