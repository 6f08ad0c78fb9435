"""``FlaskCluster``: the Flask extension views talk to.

It never imports the worker or the master. Under ``flask cluster-run`` it finds this process's
role in :mod:`flask_cluster.runtime`; anywhere else (``flask run``, the test client) the same
calls run in-process, so code and tests work unchanged.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask, current_app

from . import runtime, wire
from .wire import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from .wire import MessageError as MessageError

log = logging.getLogger("flask_cluster")

Handler = Callable[[Any], Any]
Hook = Callable[[], Any]
F = TypeVar("F", bound=Callable[..., Any])

class GatherIncomplete(Exception):
    """Some workers did not answer in time, or their handler raised.

    ``replies`` maps worker id to the value of every worker of the asker's host that answered;
    ``missing`` lists that host's ids that did not answer within the timeout; ``errors`` maps
    worker id to the error text. With ``--broker``, workers of other hosts too:
    ``missing_hosts`` maps each host with workers that did not answer to their ids,
    ``host_errors`` maps a host to its workers' error texts, and ``answers`` holds every
    :class:`Answer`, each naming its ``host`` (``""`` for the asker's).
    """

    def __init__(self, replies: dict[int, Any], missing: list[int], errors: dict[int, str],
                 missing_hosts: dict[str, list[int]] | None = None,
                 host_errors: dict[str, dict[int, str]] | None = None,
                 answers: list[wire.Answer] | None = None) -> None:
        self.replies = replies
        self.missing = missing
        self.errors = errors
        self.missing_hosts = missing_hosts or {}
        self.host_errors = host_errors or {}
        self.answers = answers or []
        parts = []
        if missing:
            parts.append(f"no reply from worker(s) {', '.join(map(str, missing))}")
        if errors:
            parts.append("; ".join(f"worker {wid} failed: {text}" for wid, text in errors.items()))
        for host, ids in self.missing_hosts.items():
            parts.append(f"no reply from host {host} worker(s) {', '.join(map(str, ids))}")
        for host, texts in self.host_errors.items():
            parts.append("; ".join(f"host {host} worker {wid} failed: {text}"
                                   for wid, text in texts.items()))
        super().__init__("; ".join(parts))


@dataclass
class _AppState:
    """What ``app.extensions["cluster"]`` holds."""

    extension: FlaskCluster
    app: Flask = field(repr=False)


class FlaskCluster:
    """Run a Flask app as a pre-fork cluster and let its workers talk to each other."""

    def __init__(self, app: Flask | None = None) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register with ``app``; stores itself in ``app.extensions["cluster"]``."""
        app.config.setdefault("CLUSTER_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES)
        app.extensions["cluster"] = _AppState(self, app)

    # -- registration -----------------------------------------------------------------------

    def on(self, topic: str) -> Callable[[F], F]:
        """Register a handler for ``topic``; it runs in every worker, inside an app context.

        Several handlers per topic are allowed. For :meth:`gather`, a worker's reply is the
        return value of the last of its handlers that returned something other than ``None``.
        """

        def register(handler: F) -> F:
            self._handlers[topic].append(handler)
            return handler

        return register

    def on_worker_start(self, hook: F) -> F:
        """Run ``hook()`` in each worker after it loaded the app, before it serves."""
        self._start_hooks.append(hook)
        return hook

    def on_worker_stop(self, hook: F) -> F:
        """Run ``hook()`` in each worker after it served its last request."""
        self._stop_hooks.append(hook)
        return hook

    # -- where am I -------------------------------------------------------------------------

    @property
    def worker_id(self) -> int | None:
        """This worker's slot ``0 .. worker_count-1``; ``None`` outside ``cluster-run``."""
        return runtime.current.worker_id if runtime.current else None

    @property
    def worker_count(self) -> int:
        """How many workers the cluster runs (1 outside ``cluster-run``)."""
        return runtime.current.worker_count if runtime.current else 1

    @property
    def is_worker(self) -> bool:
        """True in a worker process of ``flask cluster-run``."""
        return runtime.current is not None

    # -- messages ---------------------------------------------------------------------------

    def broadcast(self, topic: str, data: Any = None, *, include_self: bool = True) -> None:
        """Run ``topic``'s handlers in every live worker; returns at once.

        Every worker sees all broadcasts in one order. Raises :class:`MessageError` here, in
        the caller, when ``data`` cannot be pickled or is too large.
        """
        payload = wire.pack(data, _message_limit())
        if runtime.current is None:
            if include_self:
                self.handle(topic, payload)
            return
        runtime.current.messenger.broadcast(topic, payload, include_self)

    def gather(self, topic: str, data: Any = None, *, timeout: float = 2.0) -> list[Any]:
        """Ask every live worker; their replies in ``worker_id`` order (with ``--broker``: this
        host's, then each other host's, hosts in the order of their ids).

        Raises :class:`GatherIncomplete` (carrying the replies that did come) when a worker does
        not answer within ``timeout`` seconds or its handler raises: nobody is left out silently.
        """
        payload = wire.pack(data, _message_limit())
        if runtime.current is None:
            ok, value = self.handle(topic, payload)
            answers = [wire.Answer(0, os.getpid(), wire.OK if ok else wire.ERROR, value)]
        else:
            answers = runtime.current.messenger.gather(topic, payload, timeout)
        answers = sorted(answers, key=lambda answer: (answer.host, answer.worker_id))
        replies: dict[int, Any] = {}
        errors: dict[int, str] = {}
        missing: list[int] = []
        missing_hosts: dict[str, list[int]] = {}
        host_errors: dict[str, dict[int, str]] = {}
        for worker_id, _pid, status, value, host in answers:
            if status == wire.OK:
                if not host:
                    replies[worker_id] = value
            elif status == wire.ERROR:
                (host_errors.setdefault(host, {}) if host else errors)[worker_id] = str(value)
            else:
                (missing_hosts.setdefault(host, []) if host else missing).append(worker_id)
        if missing or errors or missing_hosts or host_errors:
            raise GatherIncomplete(replies, missing, errors, missing_hosts, host_errors, answers)
        return [answer.value for answer in answers]

    # -- used by the worker -----------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> tuple[bool, Any]:
        """Run ``topic``'s handlers on ``payload``: ``(True, reply)`` or ``(False, error text)``.

        A handler that raises is logged with its traceback; the others still run.
        """
        handlers = self._handlers.get(topic, ())
        data = wire.unpack(payload)
        reply = None
        error = None
        for handler in handlers:
            try:
                result = handler(data)
            except Exception as exc:
                log.exception("handler %r for topic %r raised", handler, topic)
                error = f"{type(exc).__name__}: {exc}"
            else:
                if result is not None:
                    reply = result
        if error is not None:
            return False, error
        return True, reply

    def run_start_hooks(self) -> None:
        for hook in self._start_hooks:
            hook()

    def run_stop_hooks(self) -> None:
        for hook in self._stop_hooks:
            try:
                hook()
            except Exception:
                log.exception("on_worker_stop hook %r raised", hook)


def _message_limit() -> int:
    try:
        return wire.limit_of(current_app.config)
    except RuntimeError:  # no app context: use the default
        return MAX_MESSAGE_BYTES


def extension_of(app: Flask) -> FlaskCluster | None:
    """The :class:`FlaskCluster` registered on ``app``, if any."""
    state = app.extensions.get("cluster")
    return state.extension if isinstance(state, _AppState) else None
