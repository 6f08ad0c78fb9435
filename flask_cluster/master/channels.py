"""The master's ends of its workers' message channels.

Messages a worker sends are decoded and handed to the master's ``on_message``; frames for a worker
are queued and written once per pass of the master's loop (not once per message), with the
selector watching for writability only while a worker's kernel buffer is full. A worker that
stays far behind on what it is sent is reported to ``on_stuck``: the master replaces it rather
than let its backlog grow without bound.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable
from typing import Any

from .. import ipc, wire
from .hub import MAX_WORKER_BACKLOG
from .worker_handle import WorkerHandle

log = logging.getLogger("flask_cluster.master")

BEHIND_GRACE = 1.0  # seconds a worker may stay more than MAX_WORKER_BACKLOG behind


class WorkerChannels:
    def __init__(self, selector: selectors.BaseSelector,
                 on_message: Callable[[WorkerHandle, wire.Message], None],
                 on_stuck: Callable[[WorkerHandle], None]) -> None:
        self.selector = selector
        self.on_message = on_message
        self.on_stuck = on_stuck
        self._unflushed: set[WorkerHandle] = set()

    @property
    def unflushed(self) -> bool:
        """Frames are queued for some worker: :meth:`flush_all` at the end of the pass."""
        return bool(self._unflushed)

    def watch(self, handle: WorkerHandle) -> None:
        def on_event(_sock: Any, mask: int) -> None:
            if mask & selectors.EVENT_WRITE:
                self._flush(handle)
            if mask & selectors.EVENT_READ:
                self._read(handle)

        handle.on_event = on_event
        self.selector.register(handle.channel.sock, selectors.EVENT_READ, on_event)

    def unwatch(self, handle: WorkerHandle) -> None:
        self._unflushed.discard(handle)
        try:
            self.selector.unregister(handle.channel.sock)
        except (KeyError, ValueError):
            pass

    def send(self, peer: Any, frame: bytes) -> None:
        """Queue ``frame`` for the worker ``peer``; the hub's way out."""
        handle: WorkerHandle = peer
        handle.channel.queue(frame)
        self._unflushed.add(handle)

    def flush_all(self) -> None:
        unflushed, self._unflushed = self._unflushed, set()
        for handle in unflushed:
            self._flush(handle)

    def check_backlog(self, handle: WorkerHandle) -> None:
        """A worker that stays more than MAX_WORKER_BACKLOG bytes behind on messages is stuck.

        One large message (a big gather answer) may exceed the bound for a moment; only a
        backlog that lasts, or grows far beyond the bound, gets the worker replaced.
        """
        pending = handle.channel.pending
        if pending <= MAX_WORKER_BACKLOG:
            handle.behind_since = None
            return
        now = time.monotonic()
        if handle.behind_since is None:
            handle.behind_since = now
        if pending > 4 * MAX_WORKER_BACKLOG or now - handle.behind_since > BEHIND_GRACE:
            log.error("%s is %d bytes behind on messages: treating it as stuck and replacing it",
                      handle, pending)
            handle.behind_since = None
            self.on_stuck(handle)

    def last_words(self, handle: WorkerHandle) -> list[wire.Message]:
        """The messages still unread in the channel of a worker that exited; read before the
        channel is closed."""
        try:
            return wire.receive(handle.channel)
        except ipc.ChannelClosed:
            return []

    def _read(self, handle: WorkerHandle) -> None:
        try:
            messages = wire.receive(handle.channel)
        except ipc.ChannelClosed:
            self.unwatch(handle)
            return
        for message in messages:
            self.on_message(handle, message)

    def _flush(self, handle: WorkerHandle) -> None:
        try:
            done = handle.channel.flush()
        except ipc.ChannelClosed:
            self.unwatch(handle)
            return
        self.check_backlog(handle)
        if handle.wants_write == done:  # changed: tell the selector
            handle.wants_write = not done
            events = selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE)
            try:
                self.selector.modify(handle.channel.sock, events, handle.on_event)
            except (KeyError, ValueError):
                pass
