"""What ``cluster-ctl status`` shows: the master's settings and one row per worker process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..scoreboard import IN_FLIGHT, REQUESTS, RSS_KIB, Scoreboard
from .recent import RecentWindow
from .roster import Roster
from .worker_handle import WorkerHandle


def cluster_status(master: dict[str, Any], roster: Roster, handles: Mapping[int, WorkerHandle],
                   scoreboard: Scoreboard, recent: RecentWindow, now: float) -> dict[str, Any]:
    """``master``: the master's own fields (pid, app, address, balance, threads, uptime)."""
    rows = []
    for member in sorted(roster.members.values(), key=lambda m: (m.worker_id, m.serial)):
        handle = handles[member.pid]
        last = recent.of(member.pid)
        rows.append({
            "worker_id": member.worker_id,
            "pid": member.pid,
            "state": member.state.label,
            "uptime": round(now - member.started, 1),
            "requests": scoreboard.get(handle.slot, REQUESTS),
            "in_flight": scoreboard.get(handle.slot, IN_FLIGHT),
            "untaken": handle.untaken,
            "rss_mib": round(scoreboard.get(handle.slot, RSS_KIB) / 1024, 1),
            "restarts": roster.restarts.get(member.worker_id, 0),
            # over the last 10 s (recent.py); the durations only with --metrics
            "req_s": round(last.per_second, 1),
            "p50_ms": None if last.p50_ms is None else round(last.p50_ms, 2),
            "p99_ms": None if last.p99_ms is None else round(last.p99_ms, 2),
        })
    return {
        "master": {**master, "workers": roster.target, "reloading": roster.reloading,
                   "last_error": roster.last_error},
        "workers": rows,
    }
