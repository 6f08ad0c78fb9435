"""How long to wait before respawning a worker number whose new worker failed to boot.

Modelled on pm2's ``exp_backoff_restart_delay``: each failure in a row waits twice as long as
the last, up to a cap; a boot that succeeds resets the delay. The roster only applies it to
failures the app caused, and only while other workers serve.
"""

from __future__ import annotations

START = 0.1
CAP = 15.0  # pm2 caps its exponential restart delay at 15 s as well
STABLE_AFTER = 30.0


class Backoff:
    def __init__(self, start: float = START, cap: float = CAP, stable_after: float = STABLE_AFTER) -> None:
        self.start = start
        self.cap = cap
        self.stable_after = stable_after
        self._delays: dict[int, float] = {}

    def reset(self, worker_id: int) -> None:
        """``worker_id`` booted: its next failure starts from the first delay again."""
        self._delays.pop(worker_id, None)

    def delay(self, worker_id: int, lived: float) -> float:
        """The wait before respawning ``worker_id``, which died after ``lived`` seconds."""
        if lived >= self.stable_after:
            self._delays.pop(worker_id, None)
            return 0.0
        previous = self._delays.get(worker_id)
        delay = self.start if previous is None else min(self.cap, previous * 2)
        self._delays[worker_id] = delay
        return delay
