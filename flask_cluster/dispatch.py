"""Which worker gets the next connection, and the hand-off itself.

The choice is pure (no I/O) so it can be tested without processes; :func:`hand_off` does the
I/O and moves on to the next candidate when a worker's queue is full or the worker is gone.
Round-robin as in Node.js's cluster module: the master owns the listener, so every worker gets
its turn whatever the kernel's wake-up order (shared accept piles bursts onto one worker).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from . import ipc
from .listeners import ACCEPT_SKIP_ERRORS

log = logging.getLogger("flask_cluster.master")


class Target(Protocol):
    """A worker as the dispatcher sees it."""

    handoff: socket.socket | None
    worker_id: int

    @property
    def in_flight(self) -> int:
        """Requests it is serving plus connections passed to it and not yet taken."""
        ...

    @property
    def connections(self) -> int:
        """Connections it has open."""
        ...

    def handed(self, count: int) -> None:
        """``count`` connections were just passed to it."""
        ...


class Accepted(NamedTuple):
    """A connection the master accepted, and its peer as ``accept()`` reported it."""

    sock: socket.socket
    peer: bytes


class RoundRobin:
    """The next ready worker in turn, as Node's cluster module does."""

    def __init__(self) -> None:
        self._next = 0

    def order(self, ready: Sequence[Target]) -> list[Target]:
        """Every ready worker, the one whose turn it is first."""
        if not ready:
            return []
        start = self._next % len(ready)
        self._next = start + 1
        return [*ready[start:], *ready[:start]]


class LeastBusy:
    """The ready worker with the fewest requests in flight; ties go round-robin among the tied
    (the next worker id after the last one chosen), so each gets its share."""

    def __init__(self) -> None:
        self._last = -1  # worker id of the last first choice

    def order(self, ready: Sequence[Target]) -> list[Target]:
        if not ready:
            return []
        span = max(target.worker_id for target in ready) + 1
        last = self._last
        # Requests in flight first, then open connections: a burst of new keep-alive
        # connections spreads out even before their first requests arrive.
        ranked = sorted(ready, key=lambda target: (target.in_flight, target.connections,
                                                   (target.worker_id - last - 1) % span))
        self._last = ranked[0].worker_id
        return ranked


def chooser(balance: str) -> RoundRobin | LeastBusy:
    return LeastBusy() if balance == "least-busy" else RoundRobin()


def hand_off(batch: list[Accepted], candidates: list[Target],
             on_gone: Callable[[Target], None]) -> bool:
    """Pass ``batch`` in one packet to the first candidate that takes it; False if none could."""
    fds = [item.sock.fileno() for item in batch]
    peers = [item.peer for item in batch]
    for target in candidates:
        assert target.handoff is not None
        try:
            if ipc.send_connections(target.handoff, fds, peers):
                target.handed(len(batch))
                return True
        except ipc.ChannelClosed:
            on_gone(target)  # died since we last looked: never hand it another connection
    return False


ACCEPT_BATCH = 64  # connections per wake-up, so signals and messages are not starved
ACCEPT_PAUSE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Dispatcher:
    """The master's accept loop for ``round-robin`` and ``least-busy``.

    Accepts, chooses, hands off. A connection no worker can take yet (all queues full, or no
    worker ready) waits here, and the listener is left alone until it is handed off, so the
    kernel's backlog holds the rest instead of our memory.
    """

    def __init__(self, listener: socket.socket, selector: selectors.BaseSelector, balance: str,
                 live: Callable[[], Sequence[Target]], on_gone: Callable[[Target], None]) -> None:
        self.listener = listener
        self.selector = selector
        self.chooser = chooser(balance)
        self.live = live
        self.on_gone = on_gone
        self.waiting: deque[Accepted] = deque()
        self.accepting = False
        self.stopped = False

    @property
    def paused(self) -> bool:
        """Connections wait for a worker, or accepting failed: the master retries each pass."""
        return not self.stopped and not self.accepting

    def start(self) -> None:
        self._accept_more(True)

    def stop(self) -> None:
        """Stop accepting; connections already accepted still go to a worker if one can take
        them (the rest are closed)."""
        self.stopped = True
        self._accept_more(False)
        self.retry()
        self.close_waiting()

    def close_waiting(self) -> None:
        for item in self.waiting:
            item.sock.close()
        self.waiting.clear()

    def on_readable(self, listener: Any, _mask: int) -> None:
        batch: list[Accepted] = []
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in ACCEPT_SKIP_ERRORS:
                    log.debug("accept failed for one connection: %s", exc)
                    continue
                if exc.errno not in ACCEPT_PAUSE_ERRORS:
                    raise
                log.warning("accept failed: %s; retrying shortly", exc)
                self._accept_more(False)  # the loop's next pass (at most a tick) resumes
                break
            batch.append(Accepted(conn, ipc.encode_peer(address)))
        if batch:
            self._dispatch(batch)

    def _dispatch(self, batch: list[Accepted]) -> None:
        """Choose a worker for each connection, then pass each worker its share in one
        packet: a burst of connects costs one ``sendmsg`` per worker, not per connection."""
        if self.waiting:
            self._wait(batch)
            return
        live = self.live()
        shares: dict[int, tuple[list[Target], list[Accepted]]] = {}
        for item in batch:
            order = self.chooser.order(live)
            if not order:
                self._wait(batch[batch.index(item):])
                break
            shares.setdefault(order[0].worker_id, (order, []))[1].append(item)
        for order, items in shares.values():
            if hand_off(items, order, self.on_gone):
                for item in items:
                    item.sock.close()
            else:
                self._wait(items)

    def _wait(self, items: list[Accepted]) -> None:
        """No worker can take these now: hold them, and stop accepting until one can."""
        self.waiting.extend(items)
        self._accept_more(False)

    def retry(self) -> None:
        """Hand off what waits; accept again once nothing does."""
        while self.waiting:
            item = self.waiting[0]
            if not hand_off([item], self.chooser.order(self.live()), self.on_gone):
                break
            self.waiting.popleft()
            item.sock.close()
        if not self.waiting and not self.stopped:
            self._accept_more(True)

    def _accept_more(self, on: bool) -> None:
        if on == self.accepting:
            return
        self.accepting = on
        if on:
            self.selector.register(self.listener, selectors.EVENT_READ, self.on_readable)
        else:
            self.selector.unregister(self.listener)
