"""The worker's side of ``broadcast`` and ``gather``: sends to the master, runs handlers.

Deliveries run on the loop thread between requests, inside an app context, so with
``--threads 1`` a handler never runs at the same time as a view. A view that is itself sending
(or waiting in ``gather``) on the loop thread keeps reading the channel while it waits, so two
workers flooding each other cannot deadlock: deliveries read then wait in a backlog that the loop
runs as soon as the view returns; gather questions are answered at once.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from . import ipc, runtime
from .extension import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from flask import Flask

    from .engine import Engine
    from .extension import FlaskCluster

log = logging.getLogger("flask_cluster.worker")

REPLY_GRACE = 1.0  # how much longer than its timeout a gather waits for the master's answer


class WorkerMessenger:
    def __init__(self, channel: ipc.MessageChannel, worker_id: int, app: Flask,
                 extension: FlaskCluster | None) -> None:
        self.channel = channel
        self.worker_id = worker_id
        self.app = app
        self.extension = extension
        self.backlog: deque[bytes] = deque()
        self._send_lock = threading.RLock()  # a gather answered while sending sends too
        self._request_ids = itertools.count(1)
        self._waiting: dict[int, Future[list[runtime.Answer]]] = {}
        self._loop_thread = threading.get_ident()
        self._engine: Engine | None = None
        self._on_master_gone: Callable[[], None] = lambda: None

    def attach(self, engine: Engine, on_master_gone: Callable[[], None]) -> None:
        self._engine = engine
        self._on_master_gone = on_master_gone
        self._loop_thread = threading.get_ident()
        engine.add_reader(self.channel.sock, self._on_readable)
        engine.idle_callbacks.append(self._run_backlog)

    # -- runtime.Messenger --------------------------------------------------------------------

    def broadcast(self, topic: str, payload: bytes, include_self: bool) -> None:
        self._send(ipc.encode(ipc.BROADCAST, topic, payload, include_self))

    def gather(self, topic: str, payload: bytes, timeout: float) -> list[runtime.Answer]:
        request_id = next(self._request_ids)
        future: Future[list[runtime.Answer]] = Future()
        self._waiting[request_id] = future
        try:
            self._send(ipc.encode(ipc.GATHER, request_id, topic, payload, timeout))
            deadline = time.monotonic() + timeout + REPLY_GRACE
            if threading.get_ident() == self._loop_thread:
                while not future.done():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._pump(remaining, want_write=False):
                        break
            if future.done() or threading.get_ident() != self._loop_thread:
                return future.result(max(0.0, deadline - time.monotonic()))
            raise TimeoutError("the master did not answer the gather")
        finally:
            self._waiting.pop(request_id, None)

    # -- sending ------------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        with self._send_lock:
            self.channel.queue(frame)
            while not self.channel.flush():
                if threading.get_ident() == self._loop_thread:
                    self._pump(1.0, want_write=True)
                else:
                    select.select([], [self.channel.sock], [], 1.0)

    def _pump(self, timeout: float, *, want_write: bool) -> bool:
        """On the loop thread, while a view waits: read and sort what the master sends."""
        sock = self.channel.sock
        readable, _, _ = select.select([sock], [sock] if want_write else [], [], timeout)
        if not readable:
            return True
        try:
            frames = self.channel.receive()
        except ipc.ChannelClosed:
            self._on_master_gone()
            return False
        for frame in frames:
            kind, args = ipc.decode(frame)
            if kind == ipc.BROADCAST:
                self.backlog.append(frame)  # runs after the view, in order
            else:
                self._dispatch(kind, args)
        return True

    # -- receiving ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            frames = self.channel.receive()
        except ipc.ChannelClosed:
            assert self._engine is not None
            self._engine.remove_reader(self.channel.sock)
            self._on_master_gone()
            return
        self.backlog.extend(frames)
        self._run_backlog()

    def _run_backlog(self) -> None:
        backlog = self.backlog
        while backlog:
            kind, args = ipc.decode(backlog.popleft())
            self._dispatch(kind, args)

    def _dispatch(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == ipc.BROADCAST:
            _seq, topic, payload = args
            self._handle(topic, payload)
        elif kind == ipc.GATHER:
            gather_id, topic, payload = args
            ok, value = self._handle(topic, payload)
            self._reply(gather_id, ok, value)
        elif kind == ipc.GATHERED:
            request_id, answers = args
            future = self._waiting.get(request_id)
            if future is not None and not future.done():
                future.set_result([_unpack(answer) for answer in answers])
        else:
            log.warning("unknown message %r from the master", kind)

    def _handle(self, topic: str, payload: bytes) -> tuple[bool, Any]:
        if self.extension is None:
            return True, None
        with self.app.app_context():
            return self.extension.handle(topic, payload)

    def _reply(self, gather_id: int, ok: bool, value: Any) -> None:
        status = runtime.OK if ok else runtime.ERROR
        limit = int(self.app.config.get("CLUSTER_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES))
        try:
            data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            status = runtime.ERROR
            data = pickle.dumps(f"reply cannot be pickled: {exc}")
        if len(data) > limit:
            status = runtime.ERROR
            data = pickle.dumps(f"reply of {len(data)} bytes is over the {limit} byte limit "
                                "(CLUSTER_MAX_MESSAGE_BYTES)")
        self._send(ipc.encode(ipc.REPLY, gather_id, status, data))


def _unpack(answer: tuple[int, int, str, bytes | None]) -> runtime.Answer:
    worker_id, pid, status, data = answer
    return worker_id, pid, status, pickle.loads(data) if data is not None else None
