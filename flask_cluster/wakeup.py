"""The self-pipe: a byte written to one end of a socket pair wakes a selector waiting on the
other. Signal handlers (through ``signal.set_wakeup_fd``) and app threads use it to wake a loop."""

from __future__ import annotations

import signal
import socket


class Wakeup:
    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake(self) -> None:
        try:
            self.writer.send(b"\0")
        except BlockingIOError:
            pass  # the loop has wake-ups pending already

    def for_signals(self) -> None:
        """Let a signal wake the loop; the byte written is the signal's number."""
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)

    def drain(self) -> bytes:
        """What was written since the last drain (signal numbers for :meth:`for_signals`). One
        read: the selector is level-triggered, so anything left wakes the loop again."""
        try:
            return self.reader.recv(4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
