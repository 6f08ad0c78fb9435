"""The master's accept loop and the hand-off of connections to workers.

Which worker is :mod:`.choice`'s business (pure, no I/O); :mod:`.hand_off` passes connections
on and reads back what comes back.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from .. import ipc
from ..listeners import accept_batch
from ..scoreboard import IDLE_MS
from .choice import Choice, LeastBusy, Target
from .hand_off import HAND_BACK_BATCH, Accepted, drain, hand_off

log = logging.getLogger("flask_cluster.master")


ACCEPT_BATCH = 64  # connections per wake-up, so signals and messages are not starved
ACCEPT_PAUSE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# While every worker has connections it has not taken, the listener rests this long after a
# round of accepting: the next connections could not be served sooner anyway, and one master
# wake-up per round instead of per connection is most of what the hand-off costs under a
# stream of connects. Never while a worker waits for work: at low concurrency that only added
# latency (benchmarks/RESULTS.md). 1 ms: epoll waits in whole milliseconds.
ACCEPT_WINDOW = 0.001
# With --threads 1, a connection passed to a worker that has not taken it this long after the
# worker's request started is taken back and placed again (Dispatcher.unstick): passed while
# the worker looked free (its next connection taken, its request not read yet) or behind a
# young request (--queue-depth), it would wait out the whole request, however long, while
# another worker idles. One epoll tick, as YOUNG (choice.py).
STUCK = 0.001
RETRY_AFTER = 0.01  # connections wait for a worker, or accepting failed: try again this soon


class Dispatcher:
    """The master's accept loop for ``round-robin`` and ``least-busy``, and in every mode the
    path of connections that come back from workers (kept-alive ones a retiring or busy worker
    hands back, ones a dead or stuck worker never took).

    Accepts (``accepts``: the master owns accepting), chooses, hands off. A connection no
    worker can take yet (all queues full, or no worker ready) waits here, and the listener is
    left alone until it is handed off, so the kernel's backlog holds the rest instead of our
    memory. With ``shared`` and ``reuseport`` the workers accept themselves and this only
    passes on what comes back.
    """

    def __init__(self, listener: socket.socket, selector: selectors.BaseSelector, balance: str,
                 live: Callable[[], Sequence[Target]], on_gone: Callable[[Target], None],
                 serving_blocks: bool = False, queue_depth: int | None = None,
                 on_holding: Callable[[int], None] = lambda count: None,
                 accepts: bool = True,
                 on_workers_accept: Callable[[bool], None] | None = None) -> None:
        self.listener = listener
        self.accepts = accepts
        # Told True when no worker has room: the workers read it on the scoreboard and accept
        # on the listener themselves, each when it is free (worker/accepting.py), instead
        # of each connection costing the master a hold, a Free and a hand-off; False when the
        # master takes the listener back. Only where the master accepts and a worker serving
        # takes nothing (--threads 1: Config.workers_accept_when_busy, as the workers know).
        self.on_workers_accept = on_workers_accept if accepts and serving_blocks else None
        self.workers_accept = False
        self.selector = selector
        self.serving_blocks = serving_blocks  # --threads 1: a worker serving takes nothing
        self.choice = Choice(balance, serving_blocks, queue_depth)
        # Kept-alive connections that move between workers go to the least busy, then the one
        # with the fewest open: they are moved to even out the load, in every balance mode.
        self.moved = LeastBusy()
        # Told how many connections wait here whenever that changes: the workers read it on
        # the scoreboard, and while it is not 0 each says wire.Free the moment it is free.
        self.on_holding = on_holding
        self.live = live
        self.on_gone = on_gone
        self.waiting: deque[Accepted] = deque()
        self.accepting = False
        self.stopped = False
        self.resting_until = 0.0  # monotonic time the listener rests until (ACCEPT_WINDOW)
        self.unstick_at: float | None = None  # when to look for connections stuck (STUCK)
        self.counts: Counter[str] = Counter()  # accepted, handed_off, taken_back (--metrics)

    @property
    def paused(self) -> bool:
        """Not accepting for now (resting, connections wait for a worker, or accepting
        failed), or, where the workers accept, connections wait here: the master calls
        :meth:`retry` each pass, by :meth:`next_deadline`."""
        if not self.accepts:
            return not self.stopped and bool(self.waiting)
        return not self.stopped and not self.accepting

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do; None while accepting normally and no
        connection may be stuck behind a request."""
        if not self.paused:
            return self.unstick_at
        if self.waiting or not self.resting_until:
            deadline = time.monotonic() + RETRY_AFTER
        else:
            deadline = self.resting_until
        return deadline if self.unstick_at is None else min(deadline, self.unstick_at)

    def tick(self) -> None:
        """On each pass of the master's loop: hand off what waits (:meth:`retry`) and take
        back what is stuck behind a request (:meth:`unstick`), when it is time."""
        if self.paused:
            self.retry()
        if self.unstick_at is not None and time.monotonic() >= self.unstick_at:
            self.unstick()

    def unstick(self) -> None:
        """Take back every connection passed to a worker that has served one request for
        :data:`STUCK` and not taken it, and place it again: with ``--threads 1`` it would wait
        for that request to end, while another worker may be free now or sooner. Each packet
        is read by one side only, so what the master reads back the worker never gets."""
        self.unstick_at = None
        now = time.monotonic()
        for worker in self.live():
            if not worker.untaken or worker.reclaim is None:
                continue
            serving_for = worker.serving_for
            if serving_for < STUCK:  # not yet, or serving none: it takes them next
                self._look_again(now + STUCK - serving_for)
                continue
            self.take_back(worker, worker.reclaim, alive=True, busy=True)

    def _look_again(self, at: float) -> None:
        if self.unstick_at is None or at < self.unstick_at:
            self.unstick_at = at

    def start(self) -> None:
        self._accept_more(True)

    def stop(self) -> None:
        """Stop accepting; connections already accepted still go to a worker if one can take
        them (the rest are closed)."""
        self.stopped = True
        self._leave_to_workers(False)
        self._accept_more(False)
        self.retry()
        self.close_waiting()

    def take_back(self, worker: Target, reclaim: socket.socket, *, alive: bool = False,
                  busy: bool = False) -> None:
        """Connections passed to ``worker`` that it never took: read back from ``reclaim``, the
        master's copy of the worker's end of the hand-off channel, and passed to another
        worker instead of being reset. Their clients lose nothing but time; they are closed
        only if no worker can take them. For a dead worker (hung, killed or crashed), and for
        one ``alive`` that stopped answering (its loop stuck in a request), or only ``busy``
        with a request that has run :data:`STUCK` (:meth:`unstick`, routine: not logged): each
        packet is read by one side only, so what the master takes the worker never gets."""
        passed = drain(reclaim)
        if not passed:
            return
        if alive:
            worker.handed(-len(passed))  # no longer waiting for it
            if not busy:
                log.warning("%s is not answering: passing on the %d connection(s) waiting "
                            "for it", worker, len(passed))
        else:
            log.info("%s left %d connection(s) it never took: passing them on", worker,
                     len(passed))
        self.came_back(worker, passed)

    # -- connections a worker hands back -------------------------------------------------------

    def watch(self, worker: Target) -> None:
        """Read what ``worker`` hands back on its hand-off channel (the channel runs both ways:
        the master's end receives what the worker sends on its own)."""
        assert worker.handoff is not None
        self.selector.register(worker.handoff, selectors.EVENT_READ,
                               lambda _sock, _mask: self._receive_back(worker))

    def unwatch(self, worker: Target) -> None:
        """``worker`` exited: dispatch what it handed back last, and stop reading its channel."""
        assert worker.handoff is not None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.handoff)
        passed = drain(worker.handoff)
        if passed:
            self.came_back(worker, passed, kept_alive=True)

    def _receive_back(self, worker: Target) -> None:
        assert worker.handoff is not None
        try:
            passed = ipc.receive_passed(worker.handoff, HAND_BACK_BATCH)
        except ipc.ChannelClosed:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.handoff)
            return
        if passed:
            self.came_back(worker, passed, kept_alive=True)

    def came_back(self, worker: Target, passed: list[tuple[int, bytes]], *,
                  kept_alive: bool = False) -> None:
        """The one path for connections that come back from ``worker`` (it retires, or moves
        them off a slow request, and hands back its kept-alive connections; or it died leaving
        some untaken): each goes to another ready worker as if just accepted; its client sees
        no close. ``kept_alive`` ones (handed back between two requests) go to another worker
        at once, busy or not: held here, they went back to ``worker`` whenever it was the first
        with room, behind its next slow request (worker/spread.py). While the cluster stops,
        only what a worker can still take is passed on; the rest is closed."""
        items = [Accepted(fd, peer) for fd, peer in passed]
        self.counts["taken_back"] += len(items)
        if not self.stopped:
            self._dispatch(items, [target for target in self.live() if target is not worker],
                           holding=not kept_alive)
            return
        self.waiting.extend(items)
        self.retry()
        self.close_waiting()

    def close_waiting(self) -> None:
        for item in self.waiting:
            os.close(item.fd)
        self.waiting.clear()
        self._tell_holding()

    def _tell_holding(self) -> None:
        """Tell ``on_holding`` how many wait here. Every change of ``waiting`` ends here
        (through :meth:`retry` or :meth:`close_waiting`): a count left above 0 had every
        worker say Free after every request, for good."""
        self.on_holding(len(self.waiting))

    def on_readable(self, listener: Any, _mask: int) -> None:
        batch: list[Accepted] = []

        def take(fd: int, address: Any) -> bool:
            batch.append(Accepted(fd, ipc.encode_peer(address)))
            return True

        # The bare descriptor: socket.accept() would wrap it in a socket object (and convert its
        # family and type to enums) only for the master to drop it after the hand-off, a fifth
        # of the master's time per connection.
        exc = accept_batch(listener._accept, take, ACCEPT_BATCH)
        if exc is not None:
            if exc.errno not in ACCEPT_PAUSE_ERRORS:
                raise exc
            log.warning("accept failed: %s; retrying shortly", exc)
            self.resting_until = 0.0
            self._accept_more(False)  # retry() resumes after RETRY_AFTER
        if not batch:
            return
        self.counts["accepted"] += len(batch)
        # Every worker still has connections it has not taken: these could not be served
        # sooner anyway, so the listener may rest (never when a worker is waiting for work:
        # that would only add latency). Not merely while every worker serves a request (with
        # --threads 1): a quick one ends long before the rest does, and a fast request beside
        # a slow one waited out the rest (mixed load, benchmarks/RESULTS.md).
        live = self.live()
        saturated = all(target.untaken for target in live)
        self._dispatch(batch, live)
        if saturated and self.accepting:
            self.resting_until = time.monotonic() + ACCEPT_WINDOW
            self._accept_more(False)

    def _dispatch(self, batch: list[Accepted], live: Sequence[Target], *,
                  holding: bool = True) -> None:
        """Choose a worker among ``live`` for each connection, then pass each worker its share
        in one packet: a burst of connects costs one ``sendmsg`` per worker, not per
        connection. Not ``holding`` (kept-alive connections moving): any worker of ``live``,
        room or not, the least busy first."""
        if self.waiting and holding:
            self._wait(batch)
            return
        shares: dict[int, tuple[list[Target], list[Accepted]]] = {}
        assigned: dict[int, int] = {}  # so the choices within a batch see each other
        for item in batch:
            order = self.choice.order(live, assigned) if holding else self.moved.order(live, assigned)
            if not order:
                self._wait(batch[batch.index(item):])
                break
            worker_id = order[0].worker_id
            shares.setdefault(worker_id, (order, []))[1].append(item)
            assigned[worker_id] = assigned.get(worker_id, 0) + 1
        for order, share in shares.values():
            # Under a low descriptor limit, packets a worker near it can take whole. A worker
            # whose app runs on its loop takes one packet a wake-up, and what it has not taken
            # goes to another worker if it is killed: one connection a packet then.
            size = 1 if self.serving_blocks else ipc.PACKET_FDS
            for start in range(0, len(share), size):
                items = share[start:start + size]
                if self._hand_off(items, order):
                    for item in items:
                        os.close(item.fd)
                else:
                    self._wait(items)

    def _hand_off(self, batch: list[Accepted], candidates: list[Target]) -> Target | None:
        taker = hand_off(batch, candidates, self.on_gone)
        if taker is not None:
            self.counts["handed_off"] += len(batch)
            if self.serving_blocks:
                self._look_again(time.monotonic() + STUCK)
        return taker

    def _wait(self, items: list[Accepted]) -> None:
        """No worker can take these now: hold them, and stop accepting until one can; the
        rest waits in the kernel's backlog, for the workers to accept if they may."""
        self.waiting.extend(items)
        self._tell_holding()
        self.resting_until = 0.0
        self._accept_more(False)
        self._leave_to_workers(not self.stopped)
        # A worker that ended its request after our look at its in-flight count, but before
        # the holding word above was set, saw no holding and said no Free: look again now,
        # or the connection waits out RETRY_AFTER.
        self.retry()

    def worker_free(self, worker: Target) -> None:
        """``worker`` said ``Free``: its last request in flight just ended. Each request ended
        earns it the oldest held connection, even if it has not taken the last one yet: a
        worker serving a queue of kept-alive requests is never free on the scoreboard for
        long, and one connection per pass of its loop would starve the held ones."""
        if self.waiting and not self.stopped and worker in self.live():
            item = self.waiting[0]
            if self._hand_off([item], [worker]) is not None:
                self.waiting.popleft()
                os.close(item.fd)
        self.retry()

    def retry(self) -> None:
        """Hand off what waits; accept again once nothing does and the rest is over. Called
        on each pass of the master's loop while paused, so also when a worker says it is free
        (the free workers take what waits, in turns)."""
        if self.waiting:
            live = self.live()
            assigned: dict[int, int] = {}
            while self.waiting:
                item = self.waiting[0]
                taker = self._hand_off([item], self.choice.order(live, assigned,
                                                                 holding=not self.stopped))
                if taker is None:
                    break
                self.waiting.popleft()
                os.close(item.fd)
                assigned[taker.worker_id] = assigned.get(taker.worker_id, 0) + 1
        self._tell_holding()
        if not self.waiting and not self.stopped and time.monotonic() >= self.resting_until:
            # While the workers accept themselves, the listener comes back once one of them
            # is idle (IDLE_MS): it would have accepted any connection waiting, so the
            # backlog is empty and the rush is over.
            if self.workers_accept and not any(worker.idle_for * 1000 >= IDLE_MS
                                               for worker in self.live()):
                return  # every worker busy, or taking the next connection itself
            self._leave_to_workers(False)
            self._accept_more(True)

    def _leave_to_workers(self, on: bool) -> None:
        """Leave the listener to the workers (``on``), or take it back."""
        if self.on_workers_accept is not None and on != self.workers_accept:
            self.workers_accept = on
            self.on_workers_accept(on)

    def _accept_more(self, on: bool) -> None:
        if on == self.accepting or not self.accepts:
            return
        self.accepting = on
        if on:
            self.selector.register(self.listener, selectors.EVENT_READ, self.on_readable)
        else:
            self.selector.unregister(self.listener)
