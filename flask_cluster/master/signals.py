"""The master's signals: handlers only record them and wake the loop; the loop acts on them."""

from __future__ import annotations

import selectors
import signal
from collections import deque
from typing import Any

from ..wakeup import Wakeup

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
