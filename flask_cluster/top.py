"""``flask cluster-ctl top``: a live table of the workers, refreshed every second.

Each frame is one ``status`` request over the control socket; the master keeps the last 10
seconds of every worker (master/recent.py), so the first frame already has rates. The request
durations (p50, p99) are measured only with ``--metrics``; without it they show ``-``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Any, TextIO

COLUMNS = (("worker", "worker_id"), ("pid", "pid"), ("state", "state"), ("req/s", "req_s"),
           ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("in flight", "in_flight"),
           ("rss MiB", "rss_mib"), ("restarts", "restarts"))
REFRESH = 1.0  # seconds
CLEAR = "\x1b[H\x1b[2J"


def frame(status: dict[str, Any]) -> str:
    """One screen of ``top`` from a ``status`` reply."""
    master, workers = status["master"], status["workers"]
    total = sum(worker["req_s"] for worker in workers)
    lines = [f"{master['app']} on {master['address']}  master {master['pid']}  "
             f"workers {master['workers']}  up {master['uptime']}s  {total:.1f} req/s "
             "(last 10 s)"]
    if master.get("last_error"):
        lines.append(f"last error: {master['last_error']}")
    rows = [tuple(title for title, _ in COLUMNS)]
    rows += [tuple(_cell(worker[key]) for _, key in COLUMNS) for worker in workers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
              for row in rows]
    if all(worker["p50_ms"] is None for worker in workers) and total:
        lines.append("p50/p99 need cluster-run --metrics")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def live(fetch: Callable[[], dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """Redraw every REFRESH seconds until ``q`` (or Ctrl-C, or the end of input)."""
    with _keys() as pressed:
        while True:
            out.write(CLEAR + frame(fetch()) + "q quits\n")
            out.flush()
            key = pressed(REFRESH)
            if key in ("q", "Q", ""):
                return


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """``pressed(timeout)``: the key pressed within ``timeout`` seconds (None: none; ``""``: the
    input ended). The terminal is in cbreak mode meanwhile, so a key needs no Enter."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None

    def pressed(timeout: float) -> str | None:
        readable, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if readable else None

    if saved is not None:
        tty.setcbreak(fd)
    try:
        yield pressed
    except KeyboardInterrupt:
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
