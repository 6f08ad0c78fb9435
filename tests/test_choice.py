"""Holding a connection while no worker has room (master/choice.py), without processes: the
choice itself, and the dispatcher's hold and release."""

from __future__ import annotations

import selectors
import socket
import time

import pytest

from flask_cluster.master.choice import Choice
from flask_cluster.master.dispatch import STUCK, Dispatcher
from flask_cluster.scoreboard import IDLE_MS
from tests.test_dispatch import Worker, ids, listener, run_once, workers

__all__ = ["listener", "workers"]  # fixtures, used by name


@pytest.mark.parametrize("balance", ["round-robin", "least-busy"])
def test_a_busy_worker_is_never_offered_while_holding(balance: str) -> None:
    free, busy = Worker(0), Worker(1, serving=1)
    busy_and_passed = Worker(2, serving=1, passed=1)
    choice = Choice(balance, serving_blocks=True, queue_depth=0)

    assert [ids(choice.order([free, busy, busy_and_passed])) for _ in range(3)] == [[0]] * 3
    assert choice.order([busy, busy_and_passed]) == []  # hold it


def test_connections_passed_and_not_taken_yet_leave_a_free_worker_room() -> None:
    taking = Worker(0, passed=3)  # serving nothing: it will take them
    choice = Choice("round-robin", serving_blocks=True, queue_depth=0)

    assert ids(choice.order([taking])) == [0]


@pytest.mark.parametrize("balance", ["round-robin", "least-busy"])
def test_a_batch_spreads_over_the_free_workers_only(balance: str) -> None:
    # A new connection is not a request yet: the batch's earlier ones leave a free worker room
    # (else a burst of slow-header clients waits here, out of the worker's header timeout).
    ready = [Worker(0), Worker(1), Worker(2, serving=1)]
    choice = Choice(balance, serving_blocks=True, queue_depth=0)
    assigned: dict[int, int] = {}
    firsts = []
    for _ in range(4):
        first = choice.order(ready, assigned)[0].worker_id
        assigned[first] = assigned.get(first, 0) + 1
        firsts.append(first)

    assert sorted(firsts) == [0, 0, 1, 1]


def test_queue_depth_lets_that_many_wait_behind_a_request() -> None:
    busy = Worker(0, serving=1)
    choice = Choice("round-robin", serving_blocks=True, queue_depth=1)

    assert ids(choice.order([busy])) == [0]
    assert choice.order([busy], {0: 1}) == []
    assert choice.order([Worker(0, serving=1, passed=1)]) == []


def test_nothing_waits_behind_a_request_that_has_run_a_millisecond() -> None:
    # It may run for seconds: the connection waits here for whichever worker frees first.
    choice = Choice("round-robin", serving_blocks=True, queue_depth=1)

    assert ids(choice.order([Worker(0, serving=1, serving_for=0.0002)])) == [0]
    assert choice.order([Worker(0, serving=1, serving_for=0.002)]) == []
    assert ids(choice.order([Worker(0, serving=1, serving_for=8.0),
                             Worker(1, serving=1, serving_for=0.0001)])) == [1]


def test_a_stopping_cluster_passes_held_connections_to_busy_workers() -> None:
    busy = Worker(0, serving=1)
    choice = Choice("least-busy", serving_blocks=True, queue_depth=0)

    assert ids(choice.order([busy], holding=False)) == [0]


def test_threaded_workers_are_never_held_for() -> None:
    busy = Worker(0, serving=3)
    choice = Choice("round-robin", serving_blocks=False, queue_depth=0)

    assert ids(choice.order([busy])) == [0]


def test_dispatcher_holds_while_every_worker_is_busy_and_releases_when_one_is_free(
        listener: socket.socket, workers: list[Worker]) -> None:
    for worker in workers:
        worker.serving = 1
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

            dispatcher.retry()
            assert held[-1] == 2 and dispatcher.paused  # the rest stays in the backlog

            workers[1].serving = 0  # ... as worker 1 just did
            dispatcher.retry()

            assert [len(worker.receive()) for worker in workers] == [0, 2, 0]
            assert held[-1] == 0
            assert not dispatcher.paused
        finally:
            for client in clients:
                client.close()


def test_each_free_signal_earns_the_worker_one_held_connection(listener: socket.socket,
                                                               workers: list[Worker]) -> None:
    only = workers[0]
    only.serving, only.passed = 1, 1  # serving, and one it has not taken yet: no room
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


def test_the_holding_word_goes_back_to_0_when_free_signals_take_the_last_one(
        listener: socket.socket, workers: list[Worker]) -> None:
    # While it is not 0 every worker says Free after every request: left at 1, each request
    # cost the master a message to read and a pass through its dispatch, for good.
    only = workers[0]
    only.serving, only.passed = 1, 1
    held: list[int] = []
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [only], pytest.fail,
                                serving_blocks=True, queue_depth=0, on_holding=held.append)
        dispatcher.start()
        client = socket.create_connection(listener.getsockname())
        try:
            while not dispatcher.waiting:
                run_once(selector, dispatcher)
            assert held[-1] == 1

            dispatcher.worker_free(only)

            assert len(only.receive()) == 1 and not dispatcher.waiting
            assert held[-1] == 0
        finally:
            client.close()


def test_a_connection_stuck_behind_a_request_goes_to_a_free_worker(listener: socket.socket,
                                                                   workers: list[Worker]) -> None:
    # Passed behind a young request (--queue-depth 1), or to a worker that looked free and
    # then started one: once that request has run STUCK, the master takes the connection back
    # off the worker's channel and passes it on, with what the client sent.
    first, second = workers[0], workers[1]
    first.serving, second.serving = 1, 1  # both serving young requests: room behind either
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [first, second],
                                pytest.fail, serving_blocks=True, queue_depth=1)
        dispatcher.start()
        client = socket.create_connection(listener.getsockname())
        try:
            while not (first.passed or second.passed):
                run_once(selector, dispatcher)
            stuck, free = (first, second) if first.passed else (second, first)
            deadline = dispatcher.next_deadline()
            assert deadline is not None and deadline - time.monotonic() <= STUCK
            stuck.serving_for = 2 * STUCK  # ... and still running
            free.serving = 0  # the other one ended its request

            dispatcher.unstick()  # as the master's loop does at that deadline

            moved = free.receive()
            assert len(moved) == 1 and stuck.receive() == []
            assert stuck.untaken == 0 and free.untaken == 0
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert moved[0].recv(100) == b"GET / HTTP/1.1\r\n\r\n"
            dispatcher.unstick()
            assert dispatcher.unstick_at is None  # all taken: nothing left to watch
        finally:
            client.close()


def test_a_connection_behind_a_request_younger_than_stuck_stays(listener: socket.socket,
                                                                workers: list[Worker]) -> None:
    only, idle = workers[0], workers[1]
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [only, idle],
                                pytest.fail, serving_blocks=True, queue_depth=1)
        client = socket.create_connection(listener.getsockname())
        try:
            idle.serving = 1
            dispatcher.on_readable(listener, selectors.EVENT_READ)
            assert only.passed == 1
            only.serving, only.serving_for = 1, STUCK / 4  # started its request just now
            idle.serving = 0

            dispatcher.unstick()

            assert idle.receive() == [] and only.untaken == 1  # it will take it in a moment
            deadline = dispatcher.next_deadline()
            assert deadline is not None and deadline - time.monotonic() <= STUCK
            assert len(only.receive()) == 1
        finally:
            client.close()


@pytest.mark.parametrize("end", ["a worker idles", "the cluster stops"])
def test_while_no_worker_has_room_the_workers_accept_until_one_idles(
        listener: socket.socket, workers: list[Worker], end: str) -> None:
    # Holding each connection cost the master an accept, a Free and a hand-off per request
    # under saturation (Connection: close at 0.75-0.88x of shared): the workers take the
    # backlog themselves, each when free, and the master takes the listener back only once
    # one has idled, which it would not while connections waited there.
    for worker in workers:
        worker.serving = 1
    told: list[bool] = []
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: workers, pytest.fail,
                                serving_blocks=True, queue_depth=0,
                                on_workers_accept=told.append)
        dispatcher.start()
        first = socket.create_connection(listener.getsockname())
        later: list[socket.socket] = []
        try:
            while not dispatcher.waiting:
                run_once(selector, dispatcher)
            assert told == [True]
            dispatcher.worker_free(workers[1])  # the held one goes out on the Free
            assert len(workers[1].receive()) == 1 and not dispatcher.waiting

            later += [socket.create_connection(listener.getsockname()) for _ in range(2)]
            for _ in range(3):
                run_once(selector, dispatcher, timeout=0.02)
            assert told == [True] and dispatcher.paused
            assert dispatcher.counts["accepted"] == 1  # the rest waits for the workers
            if end == "the cluster stops":
                dispatcher.stop()
                assert told == [True, False]
                return

            workers[2].serving, workers[2].idle_for = 0, IDLE_MS / 1000  # idle: the backlog is empty
            while dispatcher.counts["accepted"] < 3:
                run_once(selector, dispatcher)
            assert told == [True, False]
            assert len(workers[2].receive()) == 2
        finally:
            for client in [first, *later]:
                client.close()

