"""How long to wait before respawning a worker that died, per worker id.

Modelled on pm2's ``exp_backoff_restart_delay``: a worker that dies soon after it started waits
twice as long as last time, up to a cap; one that lived for a stable period respawns at once and
resets its delay.
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

    def delay(self, worker_id: int, lived: float) -> float:
        """The wait before respawning ``worker_id``, which died after ``lived`` seconds."""
        if lived >= self.stable_after:
            self._delays.pop(worker_id, None)
            return 0.0
        previous = self._delays.get(worker_id)
        delay = self.start if previous is None else min(self.cap, previous * 2)
        self._delays[worker_id] = delay
        return delay
