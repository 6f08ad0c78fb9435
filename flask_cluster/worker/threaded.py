"""The app on a thread pool (``--threads N``): the loop keeps reading and writing every socket
while app threads produce; a response crosses to the loop in chunks under a condition, its app
thread waiting while more than ``HIGH_WATER`` bytes are unsent, and idle keep-alive connections
never hold an app thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..http.parser import Request
from ..http.wsgi import Response
from ..wakeup import Wakeup
from .app_call import AppHost, app_failed, close_iterable, file_to_send, finish
from .connection import HIGH_WATER, Connection


class AppPool:
    """The app threads, and the wake-up by which their output reaches the loop."""

    def __init__(self, threads: int, add_reader: Callable[[Any, Callable[[], None]], None]) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="app")
        self.busy: set[ThreadedExchange] = set()  # on a pool thread now
        self._queue: deque[ThreadedExchange] = deque()
        self._wakeup = Wakeup()
        add_reader(self._wakeup.reader, self._on_wake)

    def start(self, host: AppHost, conn: Connection, request: Request,
              environ: dict[str, Any]) -> None:
        exchange = ThreadedExchange(self, host, conn, request, environ)
        conn.current = exchange
        self.busy.add(exchange)
        self.executor.submit(exchange.run)

    def wake(self, exchange: ThreadedExchange) -> None:
        """From a pool thread: tell the loop that ``exchange`` has something."""
        self._queue.append(exchange)
        self._wakeup.wake()

    def _on_wake(self) -> None:
        self._wakeup.drain()
        queue = self._queue
        while queue:
            queue.popleft().transfer()

    def oldest_busy(self) -> float | None:
        """Since when the longest-silent app call has produced no output (a stream that keeps
        yielding is not stuck, and time spent waiting for a slow client to read does not
        count); None when no thread is busy."""
        return min((exchange.started for exchange in self.busy if not exchange.waiting),
                   default=None)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._wakeup.close()


class ThreadedExchange:
    """A response produced on a pool thread; chunks cross to the loop under a condition."""

    __slots__ = ("pool", "host", "conn", "request", "response", "cond", "chunks", "size", "done",
                 "aborted", "file", "app_iter", "queued", "environ", "started", "waiting",
                 "settled")
    paused = False  # its pool thread produces the body; the loop only transfers it

    def __init__(self, pool: AppPool, host: AppHost, conn: Connection, request: Request,
                 environ: dict[str, Any]) -> None:
        self.pool = pool
        self.host = host
        self.conn = conn
        self.request = request
        self.response = Response(self.push, request)
        self.cond = threading.Condition(threading.Lock())
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.aborted = False  # the connection died: stop producing
        self.file: tuple[int, int, int] | None = None
        self.app_iter: Iterable[bytes] | None = None  # a file's, open until it is sent
        self.queued = False  # already in the loop's wake queue
        self.environ = environ
        self.started = time.monotonic()  # or when the app last produced output
        self.waiting = False  # blocked until the client reads: not the app's fault
        self.settled = False  # its end was counted (on_request(-1)) and its iterable closed

    # -- on the pool thread ---------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        with self.cond:
            if self.aborted:
                raise ConnectionAbortedError("client connection closed")
            # The stuck clock restarts at each output: a long stream that keeps yielding is not
            # a hung request. Set before the loop can see the chunk, so it never reads it older.
            self.started = time.monotonic()
            self.chunks.append(data)
            self.size += len(data)
            # A chunk goes to the loop at once, as the app may take long over the next. Once the
            # whole Content-Length is written, the end is moments away and its wake-up carries
            # the last chunk too (as the loop thread's flush after a request does inline).
            if not self.response.complete or self.size > HIGH_WATER:
                self._notify_loop()
            while self.size > HIGH_WATER and not self.aborted:
                self.waiting = True
                self.cond.wait()
                self.waiting = False
                self.started = time.monotonic()  # the stuck clock counts the app's time only

    def run(self) -> None:
        try:
            self._produce()
        finally:
            with self.cond:
                self.done = True
                self._notify_loop()

    def _produce(self) -> None:
        """Call the app and feed its body to the loop."""
        environ, response = self.environ, self.response
        app_iter: Iterable[bytes] = ()
        try:
            app_iter = self.host.app(environ, response.start_response)
            response.sized_by(app_iter)
            file = file_to_send(response, app_iter) if self.host.sendfile else None
            if file is not None:
                self.file = file
                return
            for chunk in app_iter:
                response.write(chunk)
            response.finish()
        except ConnectionAbortedError:
            pass
        except Exception:
            if not self.aborted:
                app_failed(response, environ, self.push)
        finally:
            if self.file is None:
                close_iterable(app_iter)
            else:
                self.app_iter = app_iter

    def _notify_loop(self) -> None:
        if not self.queued:
            self.queued = True
            self.pool.wake(self)

    # -- on the loop thread ---------------------------------------------------------------------

    def take(self) -> tuple[list[bytes], bool]:
        """The chunks produced so far, and whether production ended."""
        with self.cond:
            chunks, self.chunks = self.chunks, []
            self.size = 0
            self.queued = False
            self.cond.notify()
            return chunks, self.done

    def transfer(self) -> None:
        """Move what the app produced to the connection, as far as it takes it."""
        conn = self.conn
        if conn.closed:
            # The client left. Taking the chunks keeps the exchange's wake-ups coming (it is
            # queued at most once until taken), so its end is noticed and settled here.
            _chunks, done = self.take()
            if done:
                self._abandon()
            return
        if conn.current is not self or conn.out_size > HIGH_WATER:
            return
        chunks, done = self.take()
        if done:
            self.pool.busy.discard(self)
        for chunk in chunks:
            conn.push(chunk)
        if done and self.file is not None:
            conn.file = self.file
            self.file = None
            conn.flush()
            return
        if done:
            conn.current = None
            finish(self.host, conn, self.response, self.request, self.environ)
            conn.serve()
        else:
            conn.flush()

    resume = transfer

    def file_sent(self) -> None:
        self.conn.current = None
        self._close_file_iter()
        finish(self.host, self.conn, self.response, self.request, self.environ)
        self.conn.serve()

    def connection_lost(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify()
        self.transfer()  # settles it now if the app is done, else when it is

    def _abandon(self) -> None:
        """The client left: close what the app opened, count its end once."""
        if self.settled:
            return
        self.settled = True
        self.pool.busy.discard(self)
        self._close_file_iter()
        self.request.body.close()  # the app is done with it
        self.host.on_request(-1)

    def _close_file_iter(self) -> None:
        if self.app_iter is not None:
            close_iterable(self.app_iter)
            self.app_iter = None
