"""What the scoreboard says of each worker's health: silent past ``--timeout`` (hung), resident
memory past ``--max-memory``, and whether its loop answered lately (a candidate for the next
connection). The master reads it on its housekeeping pass; the roster decides what follows."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..config import Config
from ..scoreboard import HEARTBEAT_MS, RSS_KIB, Scoreboard, now_ms
from .actions import Action
from .roster import SERVING, Roster
from .worker_handle import WorkerHandle

log = logging.getLogger("flask_cluster.master")

MEMORY_CHECK_INTERVAL = 1.0
RESPONSIVE_MS = 1500  # a worker's loop beats every 0.5 s; older than this, it is busy


class Health:
    def __init__(self, config: Config, scoreboard: Scoreboard, roster: Roster) -> None:
        self.timeout = config.timeout
        self.max_memory = config.max_memory
        self.scoreboard = scoreboard
        self.roster = roster
        self._next_memory_check = 0.0

    def check(self, handles: Iterable[WorkerHandle], now: float) -> list[Action]:
        """The roster's answers to each worker's memory and heartbeat."""
        silent_ms = now_ms() - int(self.timeout * 1000)
        check_memory = self.max_memory and now >= self._next_memory_check
        if check_memory:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
        actions: list[Action] = []
        for handle in handles:
            if check_memory:
                rss = self.scoreboard.get(handle.slot, RSS_KIB)
                actions += self.roster.memory(handle.pid, rss, now)
            member = self.roster.members.get(handle.pid)
            if member is not None and member.state in SERVING and member.kill_at is None \
                    and self.scoreboard.get(handle.slot, HEARTBEAT_MS) < silent_ms:
                log.error("%s silent for more than %gs: replacing it", handle, self.timeout)
                actions += self.roster.hung(handle.pid, now)
        return actions

    def responsive_first(self, live: list[WorkerHandle]) -> list[WorkerHandle]:
        """Who gets the next connection: ready workers whose loop answered lately. A worker
        busy in a long view (or hung, until --timeout catches it) is skipped while others
        are responsive; if none is, every ready worker stays a candidate."""
        fresh_after = now_ms() - RESPONSIVE_MS
        responsive = [handle for handle in live
                      if self.scoreboard.get(handle.slot, HEARTBEAT_MS) >= fresh_after]
        return responsive or live

    def unresponsive(self, live: list[WorkerHandle]) -> list[WorkerHandle]:
        """Ready workers whose loop has not answered lately while another's has: what waits
        for them is better served elsewhere (a hung worker's, from its first second and not
        from its kill at --timeout)."""
        responsive = self.responsive_first(live)
        return [handle for handle in live if handle not in responsive]
