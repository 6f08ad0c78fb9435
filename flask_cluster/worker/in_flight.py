"""One request's response in flight on a worker, and the ``sendfile`` shortcut.

An :class:`InlineExchange` is produced on the loop thread (``--threads 1``) and resumed when the
client drains; a :class:`ThreadedExchange` is produced on a pool thread and crosses to the loop,
which owns every socket, in chunks under a condition, the app thread waiting while more than
``HIGH_WATER`` bytes are unsent.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..http.parser import Request
from ..http.wsgi import FileWrapper, Response
from .connection import HIGH_WATER, Connection

if TYPE_CHECKING:
    from .engine import Engine


class InlineExchange:
    """A response being produced on the loop thread; resumed when the client drains.

    Made as soon as the app has returned its iterable, so it tells the response whether that
    iterable gives the body's length (:meth:`Response.sized_by`).
    """

    __slots__ = ("response", "app_iter", "iterator", "request", "environ")
    paused = True  # always resumable by a writable event: the loop produces its body

    def __init__(self, response: Response, app_iter: Iterable[bytes], request: Request,
                 environ: dict[str, Any]) -> None:
        response.sized_by(app_iter)
        self.response = response
        self.app_iter = app_iter
        self.iterator: Iterator[bytes] = iter(app_iter)
        self.request = request
        self.environ = environ


class ThreadedExchange:
    """A response produced on a pool thread; chunks cross to the loop under a condition."""

    __slots__ = ("engine", "conn", "request", "response", "cond", "chunks", "size", "done",
                 "aborted", "file", "queued", "environ", "started", "waiting", "settled")
    paused = False  # its pool thread produces the body; the loop only transfers it

    def __init__(self, engine: Engine, conn: Connection, request: Request,
                 environ: dict[str, Any]) -> None:
        self.engine = engine
        self.conn = conn
        self.request = request
        self.response = Response(self.push, request)
        self.cond = threading.Condition(threading.Lock())
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.aborted = False  # the connection died: stop producing
        self.file: tuple[int, int, int] | None = None
        self.queued = False  # already in the loop's wake queue
        self.environ = environ
        self.started = time.monotonic()  # or when the app last produced output
        self.waiting = False  # blocked until the client reads: not the app's fault
        self.settled = False  # its end was counted (on_request(-1)) and its iterable closed

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
        engine = self.engine
        try:
            engine.produce(self, self.environ, self.response)
        finally:
            with self.cond:
                self.done = True
                self._notify_loop()

    def take(self) -> tuple[list[bytes], bool]:
        """On the loop thread: the chunks produced so far, and whether production ended."""
        with self.cond:
            chunks, self.chunks = self.chunks, []
            self.size = 0
            self.queued = False
            self.cond.notify()
            return chunks, self.done

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify()

    def _notify_loop(self) -> None:
        if not self.queued:
            self.queued = True
            self.engine.wake(self)


def file_to_send(response: Response, app_iter: Iterable[bytes]) -> tuple[int, int, int] | None:
    """For a ``wsgi.file_wrapper`` around a regular file: send the headers now and return
    ``(fd, offset, count)`` for ``os.sendfile``; ``None`` to iterate the body instead. For HEAD
    the count is 0: the length a GET would get is announced, and nothing is read."""
    if type(app_iter) is not FileWrapper:
        return None
    fileno = getattr(app_iter.filelike, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
        info = os.fstat(fd)
        offset = app_iter.filelike.tell() if hasattr(app_iter.filelike, "tell") else 0
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    count = max(0, info.st_size - offset)
    declared = response.declared_length()
    if declared is not None:
        count = min(count, declared)
    response.send_headers(count)
    if response.head:
        return fd, offset, 0
    response.body_bytes = count
    return fd, offset, count
