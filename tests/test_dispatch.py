"""Which worker gets the next connection (pure choice), the hand-off, and the master's accept
loop, with workers played by socket pairs instead of processes."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from flask_cluster import ipc
from flask_cluster.master import dispatch
from flask_cluster.master.choice import Choice, LeastBusy, RoundRobin
from flask_cluster.master.dispatch import Dispatcher
from flask_cluster.master.hand_off import Accepted, hand_off


@dataclass(eq=False)
class Worker:
    """A worker as the dispatcher sees it; ``end`` is the worker's side of its hand-off pair."""

    worker_id: int
    serving: int = 0  # requests in progress
    handoff: socket.socket | None = None
    end: socket.socket | None = None
    received: list[socket.socket] = field(default_factory=list)
    connections: int = 0
    passed: int = 0
    serving_for: float = 0.0  # seconds its request has run
    idle_for: float = 0.0  # seconds it has served nothing and has nothing untaken

    @property
    def untaken(self) -> int:
        return self.passed - len(self.received)

    @property
    def reclaim(self) -> socket.socket | None:
        """The master's copy of the worker's end (the same socket here)."""
        return self.end

    @property
    def in_flight(self) -> int:
        """Requests in progress plus connections passed and not taken, as WorkerHandle's."""
        return self.serving + self.untaken

    def handed(self, count: int) -> None:
        self.passed += count

    def receive(self) -> list[socket.socket]:
        assert self.end is not None
        got = [sock for sock, _peer in ipc.receive_connections(self.end, 64, socket.AF_UNIX)]
        self.received += got
        return got

    def close(self) -> None:
        for sock in (self.handoff, self.end, *self.received):
            if sock is not None:
                sock.close()


def ids(workers: list[Worker]) -> list[int]:
    return [worker.worker_id for worker in workers]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made = []
    for worker_id in range(3):
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        master_end.setblocking(False)
        worker_end.setblocking(False)
        made.append(Worker(worker_id, handoff=master_end, end=worker_end))
    yield made
    for worker in made:
        worker.close()


# -- the choice -----------------------------------------------------------------------------------


def test_round_robin_rotates() -> None:
    ready = [Worker(0), Worker(1), Worker(2)]
    turns = RoundRobin()

    orders = [ids(turns.order(ready)) for _ in range(4)]

    assert orders == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_round_robin_is_even_over_many_connections() -> None:
    ready = [Worker(i) for i in range(4)]
    turns = RoundRobin()

    firsts = Counter(turns.order(ready)[0].worker_id for _ in range(400))

    assert firsts == {0: 100, 1: 100, 2: 100, 3: 100}


def test_round_robin_passes_over_a_worker_that_has_not_taken_its_last_connection() -> None:
    ready = [Worker(0), Worker(1, passed=1), Worker(2)]  # worker 1's loop is busy
    turns = RoundRobin()
    assert ids(turns.order(ready)) == [0, 1, 2]

    assert ids(turns.order(ready)) == [2, 1, 0]  # 1's turn, but it is behind: 2 first
    assert ids(turns.order(ready)) == [0, 1, 2]  # the turn goes on after the one chosen

    ready[1].passed = 0  # it caught up
    assert ids(turns.order(ready)) == [1, 2, 0]


def test_round_robin_with_one_thread_passes_over_a_worker_serving_a_request() -> None:
    """With --threads 1 a worker inside a view takes nothing until the view returns (or never,
    if it hangs there), even though it took every connection it was passed."""
    ready = [Worker(0, serving=1), Worker(1)]

    assert ids(RoundRobin(serving_blocks=True).order(ready)) == [1, 0]
    assert ids(RoundRobin(serving_blocks=False).order(ready)) == [0, 1]  # threads take it


def test_round_robin_takes_plain_turns_when_every_worker_is_behind() -> None:
    ready = [Worker(0, passed=3), Worker(1, passed=1)]
    turns = RoundRobin()

    orders = [ids(turns.order(ready)) for _ in range(3)]

    assert orders == [[0, 1], [1, 0], [0, 1]]


def first_choices_in_one_batch(turns: RoundRobin | LeastBusy, ready: list[Worker],
                               count: int) -> list[int]:
    """The worker chosen for each of ``count`` connections accepted together, counting each
    choice as Dispatcher._dispatch does."""
    firsts = []
    assigned: dict[int, int] = {}
    for _ in range(count):
        first = turns.order(ready, assigned)[0].worker_id
        assigned[first] = assigned.get(first, 0) + 1
        firsts.append(first)
    return firsts


def test_round_robin_gives_a_whole_batch_to_the_worker_with_room() -> None:
    ready = [Worker(0), Worker(1, passed=1)]  # worker 1 is behind

    firsts = first_choices_in_one_batch(RoundRobin(), ready, 4)

    assert firsts == [0, 0, 0, 0]  # not queued behind the busy one (see RoundRobin.order)


def test_least_busy_counts_what_this_batch_already_gave() -> None:
    ready = [Worker(0), Worker(1), Worker(2, serving=1)]

    firsts = first_choices_in_one_batch(LeastBusy(), ready, 5)

    # The idle ones first, then worker 2 once they have one each from this batch, then turns.
    assert firsts == [0, 1, 2, 0, 1]


def test_round_robin_survives_workers_coming_and_going() -> None:
    turns = RoundRobin()
    assert turns.order([]) == []
    three = [Worker(0), Worker(1), Worker(2)]
    for _ in range(5):
        turns.order(three)

    two = [three[0], three[2]]
    order = turns.order(two)

    assert sorted(ids(order)) == [0, 2]  # every ready worker, each once
    assert ids(turns.order(two)) != ids(order)  # and the turn still moves on


def test_least_busy_picks_the_fewest_in_flight() -> None:
    ready = [Worker(0, serving=5), Worker(1, serving=1), Worker(2, serving=3)]

    assert ids(LeastBusy().order(ready)) == [1, 2, 0]


def test_least_busy_ties_rotate() -> None:
    ready = [Worker(0), Worker(1), Worker(2)]
    busy = LeastBusy()

    assert [busy.order(ready)[0].worker_id for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_least_busy_ties_share_evenly_beside_a_busy_worker() -> None:
    ready = [Worker(0), Worker(1), Worker(2), Worker(3, serving=5)]
    busy = LeastBusy()

    firsts = Counter(busy.order(ready)[0].worker_id for _ in range(300))

    assert firsts == {0: 100, 1: 100, 2: 100}


def test_choice_by_balance_mode() -> None:
    assert isinstance(Choice("least-busy").turns, LeastBusy)
    assert isinstance(Choice("round-robin").turns, RoundRobin)


# -- the hand-off ---------------------------------------------------------------------------------


def test_hand_off_passes_a_working_connection(workers: list[Worker]) -> None:
    client, server_side = socket.socketpair()
    with client, server_side:
        assert hand_off([Accepted(server_side.fileno(), b"")], [workers[1], workers[0]], on_gone=pytest.fail)

        [passed] = workers[1].receive()
        assert workers[0].receive() == []
        client.sendall(b"ping")
        passed.settimeout(5)
        assert passed.recv(4) == b"ping"  # the worker holds the same connection


def test_hand_off_skips_a_full_worker_and_a_dead_one(monkeypatch: pytest.MonkeyPatch,
                                                     workers: list[Worker]) -> None:
    full, dead, free = workers
    tried: list[int] = []

    def send_connections(channel: socket.socket, fds: list[int], peers: list[bytes]) -> bool:
        target = next(worker for worker in workers if worker.handoff is channel)
        tried.append(target.worker_id)
        if target is dead:
            raise ipc.ChannelClosed("gone")
        return target is free  # the full one's queue is full: False, try the next

    monkeypatch.setattr(dispatch.ipc, "send_connections", send_connections)
    gone: list[Worker] = []
    client, server_side = socket.socketpair()
    with client, server_side:
        assert hand_off([Accepted(server_side.fileno(), b"")], [full, dead, free], on_gone=gone.append)

    assert tried == [0, 1, 2]
    assert gone == [dead]


def test_hand_off_fails_when_nobody_can_take_it(workers: list[Worker]) -> None:
    gone: list[Worker] = []
    for worker in workers:
        assert worker.end is not None
        worker.end.close()  # every worker died
    client, server_side = socket.socketpair()
    with client, server_side:
        assert not hand_off([Accepted(server_side.fileno(), b"")], list(workers), on_gone=gone.append)

    assert gone == workers


# -- the master's accept loop ---------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def run_once(selector: selectors.BaseSelector, dispatcher: Dispatcher, timeout: float = 2.0
             ) -> None:
    """One pass of the master's loop, as far as the dispatcher is concerned."""
    deadline = dispatcher.next_deadline()
    if deadline is not None:
        timeout = min(timeout, max(0.0, deadline - time.monotonic()))
    for key, mask in selector.select(timeout):
        key.data(key.fileobj, mask)
    dispatcher.tick()


def test_dispatcher_hands_connections_out_in_turn(listener: socket.socket,
                                                  workers: list[Worker]) -> None:
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: workers, pytest.fail)
        dispatcher.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(4)]
        try:
            received: list[int] = []
            while len(received) < 4:
                run_once(selector, dispatcher)
                for worker in workers:
                    received += [worker.worker_id] * len(worker.receive())

            assert received.count(0) == 2 and received.count(1) == 1 and received.count(2) == 1
            assert not dispatcher.waiting
            while dispatcher.paused:  # resting after the last round, for at most ACCEPT_WINDOW
                run_once(selector, dispatcher)
        finally:
            for client in clients:
                client.close()


def test_least_busy_spreads_a_burst_accepted_in_one_round(listener: socket.socket,
                                                          workers: list[Worker]) -> None:
    idle, busy = workers[0], workers[1]
    busy.serving = 1
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "least-busy", lambda: [idle, busy],
                                pytest.fail)
        dispatcher.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(4)]
        try:
            run_once(selector, dispatcher)  # all four in one round: they are in the backlog

            # Not all four to the idle one: each counts as in flight once given.
            assert (len(idle.receive()), len(busy.receive())) == (2, 2)
        finally:
            for client in clients:
                client.close()


def test_listener_rests_between_rounds_while_every_worker_is_behind(
        monkeypatch: pytest.MonkeyPatch, listener: socket.socket, workers: list[Worker]) -> None:
    clock = [1000.0]
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: clock[0])
    for worker in workers:
        worker.passed = 1  # each has a connection it has not taken yet: all busy
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: workers, pytest.fail)
        dispatcher.start()
        with socket.create_connection(listener.getsockname()):
            for key, mask in selector.select(2.0):
                key.data(key.fileobj, mask)

            assert sum(len(worker.receive()) for worker in workers) == 1  # accepted at once
            assert dispatcher.paused  # then the listener rests...
            assert listener not in [key.fileobj for key in selector.get_map().values()]
            assert dispatcher.next_deadline() == 1000.0 + dispatch.ACCEPT_WINDOW
            clock[0] += dispatch.ACCEPT_WINDOW / 2
            dispatcher.retry()
            assert dispatcher.paused
            clock[0] += dispatch.ACCEPT_WINDOW / 2
            dispatcher.retry()  # ...until the window is over
            assert not dispatcher.paused
            assert dispatcher.next_deadline() is None
            assert listener in [key.fileobj for key in selector.get_map().values()]


def test_listener_does_not_rest_while_a_worker_waits_for_work(listener: socket.socket,
                                                              workers: list[Worker]) -> None:
    workers[0].passed = 1  # busy; the others have taken everything
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: workers, pytest.fail)
        dispatcher.start()
        with socket.create_connection(listener.getsockname()):
            for key, mask in selector.select(2.0):
                key.data(key.fileobj, mask)

            assert sum(len(worker.receive()) for worker in workers) == 1
            assert not dispatcher.paused  # resting would only delay the next connection
            assert listener in [key.fileobj for key in selector.get_map().values()]


def test_listener_does_not_rest_while_workers_serve_requests_they_took(
        listener: socket.socket, workers: list[Worker]) -> None:
    # --threads 1: every worker serving a request is busy, but a quick request ends long before
    # the rest would: a fast request beside a slow one waited out the rest (mixed load).
    for worker in workers:
        worker.serving = 1
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: workers, pytest.fail,
                                serving_blocks=True, queue_depth=1)
        dispatcher.start()
        with socket.create_connection(listener.getsockname()):
            for key, mask in selector.select(2.0):
                key.data(key.fileobj, mask)

            assert sum(len(worker.receive()) for worker in workers) == 1  # behind a young one
            assert not dispatcher.paused
            assert listener in [key.fileobj for key in selector.get_map().values()]


def test_dispatcher_holds_a_connection_until_a_worker_is_ready(listener: socket.socket,
                                                               workers: list[Worker]) -> None:
    live: list[Worker] = []  # no worker ready yet
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "least-busy", lambda: live, pytest.fail)
        dispatcher.start()
        with socket.create_connection(listener.getsockname()) as client:
            run_once(selector, dispatcher)
            assert len(dispatcher.waiting) == 1
            assert dispatcher.paused  # the listener is left to the kernel's backlog
            assert listener not in [key.fileobj for key in selector.get_map().values()]

            live.append(workers[2])
            dispatcher.retry()

            assert not dispatcher.waiting
            assert not dispatcher.paused
            [passed] = workers[2].receive()
            client.sendall(b"hi")
            passed.settimeout(5)
            assert passed.recv(2) == b"hi"


def test_dispatcher_reports_a_dead_worker_and_uses_another(listener: socket.socket,
                                                           workers: list[Worker]) -> None:
    dead, alive = workers[0], workers[1]
    assert dead.end is not None
    dead.end.close()
    live = [dead, alive]
    gone: list[Worker] = []

    def lost(worker: Worker) -> None:
        gone.append(worker)
        live.remove(worker)

    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: live, lost)  # type: ignore[arg-type]
        dispatcher.start()
        with socket.create_connection(listener.getsockname()):
            run_once(selector, dispatcher)

            assert gone == [dead]
            assert len(alive.receive()) == 1


def test_connections_a_dead_worker_never_took_go_to_another(listener: socket.socket,
                                                            workers: list[Worker]) -> None:
    dead, alive = workers[0], workers[1]
    live = [dead]
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: live, pytest.fail)
        dispatcher.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            while dead.untaken < 3:
                run_once(selector, dispatcher)
            live[:] = [alive]  # it died without taking them; its end is still open here
            assert dead.end is not None

            dispatcher.take_back(dead, dead.end)

            taken = alive.receive()
            assert len(taken) == 3
            for client in clients:
                client.sendall(b"hi")
            assert sorted(passed.recv(2) for passed in taken) == [b"hi"] * 3
            assert dead.receive() == []  # nothing left behind
        finally:
            for client in clients:
                client.close()


def test_connections_a_worker_hands_back_go_to_another_unclosed(listener: socket.socket,
                                                                 workers: list[Worker]) -> None:
    """A retiring worker sends its kept-alive connections back on its end of the hand-off
    channel; the master reads them on its own end and passes them to a worker that stays (never
    the one that handed them back), and the client's connection stays open throughout."""
    retiring, staying = workers[0], workers[1]
    live = [retiring, staying]
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: live, pytest.fail)
        dispatcher.watch(retiring)
        dispatcher.watch(staying)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        served = [listener.accept()[0] for _ in clients]  # as if retiring had served them
        try:
            assert retiring.end is not None
            assert ipc.send_connections(retiring.end, [sock.fileno() for sock in served],
                                        [b"127.0.0.1 1", b"127.0.0.1 2", b"127.0.0.1 3"])
            for sock in served:
                sock.close()  # the worker's copies: the clients must not see a close

            run_once(selector, dispatcher)

            taken = staying.receive()
            assert len(taken) == 3 and retiring.receive() == []
            assert staying.passed == 3
            for index, client in enumerate(clients):
                client.sendall(b"next %d" % index)
            assert sorted(sock.recv(16) for sock in taken) == [b"next 0", b"next 1", b"next 2"]
        finally:
            for client in clients:
                client.close()


def test_connections_handed_back_by_a_worker_that_exited_are_not_lost(
        listener: socket.socket, workers: list[Worker]) -> None:
    """A worker can hand back and exit before the master reads its channel: reaping it reads
    what it sent last (``unwatch``) before the channel closes."""
    gone, staying = workers[0], workers[1]
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [staying], pytest.fail)
        dispatcher.watch(gone)
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        try:
            assert gone.end is not None
            assert ipc.send_connections(gone.end, [served.fileno()], [b""])
            served.close()

            dispatcher.unwatch(gone)

            taken = staying.receive()
            assert len(taken) == 1
            client.sendall(b"x")
            assert taken[0].recv(1) == b"x"
            assert selector.get_map() is not None and gone.handoff not in {
                key.fileobj for key in selector.get_map().values()}
        finally:
            client.close()


def test_connections_handed_back_wait_for_a_worker_when_none_is_ready(
        listener: socket.socket, workers: list[Worker]) -> None:
    retiring, later = workers[0], workers[1]
    live: list[Worker] = []
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: live, pytest.fail)
        dispatcher.start()
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        try:
            dispatcher.came_back(retiring, [(os.dup(served.fileno()), b"")])
            served.close()
            assert len(dispatcher.waiting) == 1 and dispatcher.paused

            live.append(later)
            dispatcher.retry()

            taken = later.receive()
            assert len(taken) == 1 and not dispatcher.waiting
            client.sendall(b"y")
            assert taken[0].recv(1) == b"y"
        finally:
            client.close()


def test_connections_waiting_for_a_worker_that_stopped_answering_go_to_another(
        listener: socket.socket, workers: list[Worker]) -> None:
    """Taken back while the worker lives (its loop stuck in a request): each packet is read by
    one side only, and what the master took no longer counts as untaken for that worker."""
    stuck, other = workers[0], workers[1]
    live = [stuck]
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: live, pytest.fail)
        dispatcher.start()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
        try:
            while stuck.untaken < 2:
                run_once(selector, dispatcher)
            live[:] = [stuck, other]
            assert stuck.end is not None

            dispatcher.take_back(stuck, stuck.end, alive=True)

            assert len(other.receive()) == 2 and stuck.untaken == 0
            assert stuck.receive() == []
        finally:
            for client in clients:
                client.close()


def test_dispatcher_stop_closes_what_no_worker_took(listener: socket.socket) -> None:
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [], pytest.fail)
        dispatcher.start()
        with socket.create_connection(listener.getsockname()) as client:
            run_once(selector, dispatcher)
            assert len(dispatcher.waiting) == 1

            dispatcher.stop()

            assert not dispatcher.waiting
            assert not dispatcher.paused  # stopped, not paused: nothing to retry
            client.settimeout(5)
            assert client.recv(1) == b""  # the client sees the close


class FailingListener:
    def __init__(self, error: OSError) -> None:
        self.error = error

    def _accept(self) -> tuple[int, object]:
        raise self.error


def test_accept_running_out_of_descriptors_pauses(listener: socket.socket) -> None:
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [], pytest.fail)
        dispatcher.start()

        dispatcher.on_readable(FailingListener(OSError(errno.EMFILE, "Too many open files")), 0)

        assert dispatcher.paused  # the master's loop retries shortly
        dispatcher.retry()
        assert not dispatcher.paused


@pytest.mark.parametrize("error", [ConnectionAbortedError(errno.ECONNABORTED, "aborted"),
                                   OSError(errno.EPROTO, "protocol error")],
                         ids=["ECONNABORTED", "EPROTO"])
def test_accept_error_of_one_client_is_not_fatal(listener: socket.socket, error: OSError) -> None:
    with selectors.DefaultSelector() as selector:
        dispatcher = Dispatcher(listener, selector, "round-robin", lambda: [], pytest.fail)
        dispatcher.start()

        dispatcher.on_readable(FailingListener(error), 0)

        assert not dispatcher.stopped
