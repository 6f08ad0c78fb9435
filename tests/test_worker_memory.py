"""The heartbeat's memory reading works at the descriptor limit (it once raised EMFILE out of
the worker's loop and killed it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

AT_THE_LIMIT = """
import resource
from flask_cluster.worker.memory import ResidentMemory

memory = ResidentMemory()
before = memory.kib()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(open("/dev/null"))
except OSError as exc:
    assert exc.errno == 24, exc  # EMFILE: no descriptor left
print(before, memory.kib())
"""


def test_memory_is_read_with_no_descriptor_left() -> None:
    done = subprocess.run([sys.executable, "-c", AT_THE_LIMIT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    before, at_limit = map(int, done.stdout.split())
    assert before > 1000 and at_limit > 1000  # KiB: a Python process is several MiB
