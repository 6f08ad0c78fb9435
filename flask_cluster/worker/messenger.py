"""The worker's side of ``broadcast`` and ``gather``: sends to the master, runs handlers.

Deliveries run on the loop thread between requests, inside an app context, so with
``--threads 1`` a handler never runs at the same time as a view. A view that is itself sending
(or waiting in ``gather``) on the loop thread keeps reading the channel while it waits, so two
workers flooding each other cannot deadlock: deliveries read then wait in a backlog that the loop
runs as soon as the view returns; gather questions are answered at once.

Deliveries carry the master's sequence number: a worker runs each broadcast once, in that order,
and :attr:`WorkerMessenger.last_seq` says how far it got.

With a broker, broadcasts, gather questions and replies cross machines: they are signed here with
the app's key and checked here before they are unpickled (:mod:`flask_cluster.signing`), and a
signed message copied back into the stream is refused (:mod:`.replay`); the master only relays
them. It also tells, through shared memory, when its buffer for an unreachable broker is full:
:meth:`WorkerMessenger.broadcast` then raises in the view instead of losing the broadcast.
"""

from __future__ import annotations

import itertools
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .. import ipc, signing, wire
from .replay import ReplayGuard

if TYPE_CHECKING:
    from flask import Flask

    from ..extension import FlaskCluster
    from .engine import Engine

log = logging.getLogger("flask_cluster.worker")

REPLY_GRACE = 1.0  # how much longer than its timeout a gather waits for the master's answer


class WorkerMessenger:
    def __init__(self, channel: ipc.MessageChannel, worker_id: int, app: Flask,
                 extension: FlaskCluster | None, *, signing_key: bytes | None = None,
                 broker_full: Callable[[], bool] = lambda: False) -> None:
        """``signing_key``: with a broker, the key messages are signed and checked with;
        ``broker_full``: the master holds ``--broker-buffer`` broadcasts it could not send."""
        self.channel = channel
        self.worker_id = worker_id
        self.app = app
        self.extension = extension
        self.backlog: deque[wire.Message] = deque()
        self.last_seq = 0  # of the last broadcast run here
        self.signing_key = signing_key
        self.rejected = 0  # deliveries dropped for a missing or wrong signature
        self.replayed = 0  # signed deliveries dropped as copies or stale
        self._stamper = signing.Stamper()
        self._guard = ReplayGuard()
        self._broker_full = broker_full
        self._send_lock = threading.RLock()  # a gather answered while sending sends too
        self._request_ids = itertools.count(1)
        self._waiting: dict[int, Future[list[wire.Answer]]] = {}
        self._handlers: dict[type[wire.Message], Callable[[Any], None]] = {
            wire.Deliver: self._on_deliver,
            wire.Ask: self._on_ask,
            wire.Gathered: self._on_gathered,
            wire.Publish: self._on_publish,
        }
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
        if self._broker_full():
            raise wire.BrokerBufferFull(
                "the broker is unreachable and --broker-buffer broadcasts wait already: this "
                "one is refused, not sent")
        self._send_signed(signing.BROADCAST, topic, payload,
                          lambda signed: wire.Broadcast(topic, signed, include_self))

    def gather(self, topic: str, payload: bytes, timeout: float) -> list[wire.Answer]:
        request_id = next(self._request_ids)
        future: Future[list[wire.Answer]] = Future()
        self._waiting[request_id] = future
        try:
            self._send_signed(signing.ASK, topic, payload,
                              lambda signed: wire.Gather(request_id, topic, signed, timeout))
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

    # -- signing ------------------------------------------------------------------------------

    def _send_signed(self, purpose: bytes, topic: str, payload: bytes,
                     message: Callable[[bytes], wire.Message]) -> None:
        # Stamped and sent under one lock: with --threads, stamps leave in the order of their
        # counters, and a receiver refuses a counter that goes back as a copy.
        with self._send_lock:
            self._send(wire.encode(message(self._sign(purpose, topic, payload))))

    def _sign(self, purpose: bytes, topic: str, payload: bytes) -> bytes:
        if self.signing_key is None:
            return payload
        return signing.sign(self.signing_key, purpose, topic, payload, self._stamper.next(purpose))

    def _verified(self, purpose: bytes, topic: str, payload: bytes) -> bytes | None:
        """``payload`` with its signature checked and removed, or ``None`` (logged, counted)."""
        if self.signing_key is None:
            return payload
        checked = signing.verify(self.signing_key, purpose, topic, payload)
        if checked is None:
            self.rejected += 1
            log.warning("%r dropped: its signature is missing or wrong (%d so far)", topic,
                        self.rejected)
            return None
        stamp, payload = checked
        if purpose != signing.REPLY:
            why = self._guard.refuse(purpose, stamp)
            if why is not None:
                self.replayed += 1
                if self.replayed == 1:  # one line, not one per copy: a flood stays readable
                    log.warning("%r dropped: %s; further ones are dropped and counted quietly",
                                topic, why)
                return None
        return payload

    # -- sending ------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Send an encoded message to the master, whole, whichever thread is sending too."""
        self._send(frame)

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
            messages = wire.receive(self.channel)
        except ipc.ChannelClosed:
            self._on_master_gone()
            return False
        for message in messages:
            if type(message) is wire.Deliver:
                self.backlog.append(message)  # runs after the view, in order
            else:
                self._dispatch(message)
        return True

    # -- receiving ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            messages = wire.receive(self.channel)
        except ipc.ChannelClosed:
            assert self._engine is not None
            self._engine.remove_reader(self.channel.sock)
            self._on_master_gone()
            return
        self.backlog.extend(messages)
        self._run_backlog()

    def _run_backlog(self) -> None:
        backlog = self.backlog
        while backlog:
            self._dispatch(backlog.popleft())

    def _dispatch(self, message: wire.Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            log.warning("unexpected %s from the master", type(message).__name__)
        else:
            handler(message)

    def _on_deliver(self, message: wire.Deliver) -> None:
        if message.seq <= self.last_seq:
            log.warning("broadcast %d came again after %d: not run twice", message.seq,
                        self.last_seq)
            return
        self.last_seq = message.seq
        payload = self._verified(signing.BROADCAST, message.topic, message.payload)
        if payload is not None:
            self._handle(message.topic, payload)

    def _on_ask(self, message: wire.Ask) -> None:
        payload = self._verified(signing.ASK, message.topic, message.payload)
        if payload is None:
            return  # the asker reports this worker missing
        ok, value = self._handle(message.topic, payload)
        status, reply = wire.pack_reply(ok, value, wire.limit_of(self.app.config))
        self._send(wire.encode(wire.Reply(message.gather_id, status,
                                          self._sign(signing.REPLY, "", reply))))

    def _on_publish(self, message: wire.Publish) -> None:
        try:
            self.broadcast(message.topic, message.payload, True)
        except wire.BrokerBufferFull as exc:
            log.error("cluster-ctl broadcast %r not sent: %s", message.topic, exc)

    def _on_gathered(self, message: wire.Gathered) -> None:
        future = self._waiting.get(message.request_id)
        if future is not None and not future.done():
            future.set_result([self._answer(answer) for answer in message.answers])

    def _answer(self, answer: wire.WireAnswer) -> wire.Answer:
        worker_id, pid, status, payload, host = answer
        if payload is not None:
            payload = self._verified(signing.REPLY, "", payload)
            if payload is None:
                return wire.Answer(worker_id, pid, wire.ERROR,
                                   "reply dropped: its signature is missing or wrong", host)
        return wire.unpack_answer((worker_id, pid, status, payload, host))

    def _handle(self, topic: str, payload: bytes) -> tuple[bool, Any]:
        if self.extension is None:
            return True, None
        with self.app.app_context():
            return self.extension.handle(topic, payload)
