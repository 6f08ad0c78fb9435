"""Refusing signed messages that were copied back into the broker's stream.

A signature proves who wrote a message, not that it is new: anyone who can write to Redis can
``XADD`` a copy of a signed entry. Each signed message carries a :class:`~flask_cluster.signing.Stamp`;
one sender's messages of one purpose reach every worker in the order they were sent (they travel
one stream, and the masters drop the copies their own resends make), so a counter not above the
last one seen from that sender is a copy. A stamp older (or further ahead) than the window is
refused too: that bounds what the guard must remember.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from ..signing import Stamp

WINDOW_MS: Final = 10 * 60 * 1000
COPY: Final = "a copy of one already run"
STALE: Final = "stamped outside the 10 minute window (a replay, or clocks apart)"


def wall_ms() -> int:
    return int(time.time() * 1000)


class ReplayGuard:
    def __init__(self, window_ms: int = WINDOW_MS, clock: Callable[[], int] = wall_ms) -> None:
        self.window_ms = window_ms
        self._clock = clock
        self._last: dict[tuple[bytes, bytes], tuple[int, int]] = {}  # -> (counter, time_ms)
        self._next_prune = 0

    def refuse(self, purpose: bytes, stamp: Stamp) -> str | None:
        """Why the message stamped ``stamp`` must not run, or ``None`` (and it is remembered)."""
        now = self._clock()
        if abs(now - stamp.time_ms) > self.window_ms:
            return STALE
        key = (purpose, stamp.sender)
        last = self._last.get(key)
        if last is not None and stamp.counter <= last[0]:
            return COPY
        self._last[key] = (stamp.counter, stamp.time_ms)
        if now >= self._next_prune:
            self._prune(now)
        return None

    def _prune(self, now: int) -> None:
        """Forget senders silent for a window: anything they sent before is stale anyway."""
        self._next_prune = now + self.window_ms
        for key, (_counter, time_ms) in list(self._last.items()):
            if now - time_ms > self.window_ms:
                del self._last[key]

    def __len__(self) -> int:
        return len(self._last)
