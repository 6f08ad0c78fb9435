"""What the worker's loop waits on: sockets and the object to call when each is ready.

The ``selectors`` API, less its cost: every request passes here once or twice (a wait, and for a
new connection a register and an unregister), and ``selectors`` spends several Python calls and
a named tuple on each. On Linux this talks to ``epoll`` directly; elsewhere (macOS) it is a thin
layer over ``selectors.DefaultSelector``. Both give what ``selectors`` gives: ``EVENT_READ`` and
``EVENT_WRITE`` masks, ``KeyError`` for a file registered twice or not at all, ``ValueError`` for
a closed one.
"""

from __future__ import annotations

import select
import selectors
from typing import Any, Protocol

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class Poller(Protocol):
    def register(self, fileobj: Any, events: int, data: Any) -> None: ...

    def modify(self, fileobj: Any, events: int, data: Any) -> None: ...

    def unregister(self, fileobj: Any) -> None: ...

    def ready(self, timeout: float) -> list[tuple[Any, int]]:
        """Wait up to ``timeout`` seconds; ``(data, mask)`` of each ready file."""

    def close(self) -> None: ...


class SelectorsPoller:
    """Over ``selectors.DefaultSelector``, where there is no ``epoll``."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        self._selector.register(fileobj, events, data)

    def modify(self, fileobj: Any, events: int, data: Any) -> None:
        self._selector.modify(fileobj, events, data)

    def unregister(self, fileobj: Any) -> None:
        self._selector.unregister(fileobj)

    def ready(self, timeout: float) -> list[tuple[Any, int]]:
        return [(key.data, mask) for key, mask in self._selector.select(timeout)]

    def close(self) -> None:
        self._selector.close()


if hasattr(select, "epoll"):
    _IN, _OUT = select.EPOLLIN, select.EPOLLOUT
    _NOT_IN, _NOT_OUT = ~_IN, ~_OUT

    class EpollPoller:
        """``epoll`` directly: one dict of ``fd -> (data, events, fileobj)``."""

        def __init__(self) -> None:
            self._epoll = select.epoll()
            self._files: dict[int, tuple[Any, int, Any]] = {}

        def _fd(self, fileobj: Any) -> int:
            fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
            if fd >= 0:
                return fd
            # Closed: still found by the object itself, as selectors does.
            for fd, (_, _, registered) in self._files.items():
                if registered is fileobj:
                    return fd
            raise ValueError(f"{fileobj!r} is closed")

        def register(self, fileobj: Any, events: int, data: Any) -> None:
            fd = self._fd(fileobj)
            if fd in self._files:
                raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
            self._epoll.register(fd, (events & EVENT_READ and _IN) | (events & EVENT_WRITE and _OUT))
            self._files[fd] = (data, events, fileobj)

        def modify(self, fileobj: Any, events: int, data: Any) -> None:
            fd = self._fd(fileobj)
            if self._files[fd][1] != events:
                self._epoll.modify(fd, (events & EVENT_READ and _IN)
                                   | (events & EVENT_WRITE and _OUT))
            self._files[fd] = (data, events, fileobj)

        def unregister(self, fileobj: Any) -> None:
            fd = self._fd(fileobj)
            del self._files[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # closed already, which removed it from the epoll set

        def ready(self, timeout: float) -> list[tuple[Any, int]]:
            files = self._files
            try:
                events = self._epoll.poll(timeout, len(files) or 1)
            except InterruptedError:
                return []
            ready = []
            for fd, event in events:
                entry = files.get(fd)
                if entry is not None:
                    # What selectors reports: an error or hang-up wakes both directions.
                    mask = (event & _NOT_OUT and EVENT_READ) | (event & _NOT_IN and EVENT_WRITE)
                    ready.append((entry[0], mask & entry[1]))
            return ready

        def close(self) -> None:
            self._epoll.close()
            self._files.clear()


def new_poller() -> Poller:
    return EpollPoller() if hasattr(select, "epoll") else SelectorsPoller()
