"""Responses answered during one pass of the loop, sent together at its end (``--threads 1``).

Sending each response the moment it is made interleaves the app's Python with the kernel's TCP
work for the send and with the client's wake-up: a client waiting on many connections (a proxy,
a load generator) is woken once per response, and the CPU's caches go back and forth between the
app and the network stack. Sending what one pass of the loop answered in a row, after its last
app call, wakes the client once for all of them and keeps each kind of work together. Same run,
6 alternating rounds, 32 kept-alive connections: Flask hello 1.17x the requests per second of
sending each at once, raw WSGI 1.12x (``benchmarks/RESULTS.md``, "Issue 13: a pass's responses
sent together").

The cost is latency: a response waits for the requests read in the same pass after it. It is
bounded three ways, so that a fast response never waits behind a slow view:

* before a request starts, responses that have waited :data:`WAIT` go out;
* a request that held the loop :data:`LONG` or more sends what waits as it ends, and for
  :data:`QUIET` after it the worker sends every response at once, as without batching: a worker
  whose app has slow views does not batch, so a fast response read in the same pass as a slow
  request never waits for it (a first slow request after a quiet spell can delay the responses
  of its own pass once; ``benchmarks/mixed_load.py`` measures the tail). The hold is read from
  the wall clock, so on a machine busy enough to deschedule the loop for a millisecond, holding
  turns off too, which costs throughput, never latency;
* outside a pass (a housekeeping tick) a response goes out at once.

Only whole responses waiting in a connection's buffer are held (with pipelining, all those the
pass answered on it): never a response still in progress (a streamed body's chunks go out as
they are made; only its end may wait for the pass), a file sent with ``sendfile``, or a
response that closes its connection.
"""

from __future__ import annotations

from .connection import Connection

WAIT = 0.001  # seconds the first held response may wait for the requests after it
LONG = 0.001  # seconds a request held the loop: from then on, the worker's app has slow views
QUIET = 0.25  # seconds without a LONG request before responses are held again


class SendBatch:
    __slots__ = ("waiting", "since", "long_at", "in_pass")

    def __init__(self) -> None:
        self.waiting: list[Connection] = []
        self.since = 0.0  # when the first waiting response's request was read
        self.long_at = float("-inf")  # when the last LONG request ended
        self.in_pass = False

    def begin(self) -> None:
        """A pass of the loop starts handling its events."""
        self.in_pass = True

    def hold(self, conn: Connection) -> bool:
        """Hold ``conn``'s answered response until the pass ends; False: send it now."""
        if not self.in_pass or conn.current is not None or conn.file is not None \
                or not conn.out or conn.http.closing or conn.last_active - self.long_at < QUIET:
            return False
        if not self.waiting:
            self.since = conn.last_active
        self.waiting.append(conn)
        return True

    def before_request(self, read_at: float) -> None:
        """A request read at ``read_at`` is about to start."""
        if self.waiting and read_at - self.since >= WAIT:
            self.send()

    def request_ended(self, held: float, now: float) -> None:
        """A request held the loop ``held`` seconds, ending at ``now`` (monotonic)."""
        if held >= LONG:
            self.long_at = now
            self.send()

    def end(self) -> None:
        """The pass has handled its events: send what waits."""
        self.in_pass = False
        self.send()

    def send(self) -> None:
        waiting, self.waiting = self.waiting, []
        for conn in waiting:
            try:
                conn.flush()
            except Exception:  # as the loop would for an error in the connection's handlers
                conn.crashed()
