"""What ``cluster-ctl status`` shows: the master's settings and one row per worker process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..scoreboard import IN_FLIGHT, REQUESTS, RSS_KIB, Scoreboard
from .roster import Roster
from .worker_handle import WorkerHandle


def cluster_status(master: dict[str, Any], roster: Roster, handles: Mapping[int, WorkerHandle],
                   scoreboard: Scoreboard, now: float) -> dict[str, Any]:
    """``master``: the master's own fields (pid, app, address, balance, threads, uptime)."""
    rows = []
    for member in sorted(roster.members.values(), key=lambda m: (m.worker_id, m.serial)):
        handle = handles[member.pid]
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
        })
    return {
        "master": {**master, "workers": roster.target, "reloading": roster.reloading,
                   "last_error": roster.last_error},
        "workers": rows,
    }
