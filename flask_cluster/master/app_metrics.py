"""App metrics with no set-up: a private ``PROMETHEUS_MULTIPROC_DIR`` for each cluster.

The master makes the directory in the user's private runtime directory, empties it at start,
and puts it in the environment before the first fork, so ``prometheus_client`` in every worker
writes its values to files there (worker/app_metrics.py). When a worker exits its live gauges
are removed (``mark_process_dead``); its counters stay, so sums never go back. The master's
``/metrics`` reads the directory with the library's ``MultiProcessCollector``.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from prometheus_client import multiprocess

from .registry import make_private, runtime_base, safe_name

ENV = "PROMETHEUS_MULTIPROC_DIR"


class AppMetricsDir:
    def __init__(self, app_name: str, pid: int) -> None:
        parent = runtime_base() / "metrics"
        make_private(parent.parent)
        make_private(parent)
        self.prefix = f"{safe_name(app_name)}."
        for old in parent.glob(self.prefix + "*"):  # left by a master that was killed
            if not _running(old.name[len(self.prefix):]):
                shutil.rmtree(old, ignore_errors=True)
        self.path = parent / f"{self.prefix}{pid}"
        shutil.rmtree(self.path, ignore_errors=True)  # a pid reused: nothing of before counts
        self.path.mkdir(mode=0o700)
        os.environ[ENV] = str(self.path)  # before the first fork: every worker inherits it

    def worker_exited(self, pid: int) -> None:
        multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _running(pid_text: str) -> bool:
    if not pid_text.isdigit():
        return False
    with contextlib.suppress(PermissionError):
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
    return True


