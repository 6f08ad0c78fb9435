"""The master's signals: handlers only record them and wake the loop; the loop acts on them."""

from __future__ import annotations

import logging
import selectors
import signal
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..wakeup import Wakeup

log = logging.getLogger("flask_cluster.master")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


# What each signal asks of the master (docs/operations.rst, "Signals").
MEANINGS: dict[int, str] = {signal.SIGTERM: "graceful stop", signal.SIGINT: "graceful stop",
            signal.SIGQUIT: "fast stop", signal.SIGCHLD: "reap", signal.SIGHUP: "reload",
            signal.SIGTTIN: "one more", signal.SIGTTOU: "one fewer"}


def meaning(signum: int, *, stopping: bool) -> str:
    if signum == signal.SIGINT and stopping:
        return "fast stop"  # a second Ctrl-C: at once, as most servers do
    return MEANINGS[signum]


class SignalQueue:
    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.wakeup = Wakeup()

    def install(self, selector: selectors.BaseSelector) -> None:
        self.wakeup.for_signals()
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._record)
        selector.register(self.wakeup.reader, selectors.EVENT_READ, self._drain)

    def _record(self, signum: int, _frame: Any) -> None:
        self.pending.append(signum)

    def act(self, handlers: Mapping[str, Callable[[], None]], stopping: Callable[[], bool],
            graceful_timeout: float) -> None:
        """Call, for every signal recorded, the handler of its :func:`meaning`; one that raises
        ValueError (scaling past the limits) is logged and the signal ignored."""
        while self.pending:
            signum = self.pending.popleft()
            asked = meaning(signum, stopping=stopping())
            if asked == "graceful stop" and signum == signal.SIGINT:
                log.info("finishing requests in flight (up to %gs); Ctrl-C again to stop at once",
                         graceful_timeout)
            try:
                handlers[asked]()
            except ValueError as exc:
                log.warning("%s ignored: %s", signal.Signals(signum).name, exc)

    def _drain(self, _sock: Any, _mask: int) -> None:
        self.wakeup.drain()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.wakeup.close()


def default_handlers() -> None:
    """In a forked worker: the master's handlers and wake-up socket are not its own."""
    signal.set_wakeup_fd(-1)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
