"""``--reload``: notice when a Python source file under the project changes (development only).

Polling, not inotify: it works the same on Linux and macOS without another dependency, and a
development tree is small enough to stat once a second.
"""

from __future__ import annotations

import os
import time

SKIP_DIRS = frozenset(("__pycache__", "node_modules", "site-packages", "venv", ".venv", "build",
                       "dist"))
MAX_FILES = 5000  # a tree larger than this is probably not the app's own source
INTERVAL = 1.0


class SourceWatcher:
    def __init__(self, root: str) -> None:
        self.root = root
        self._next = 0.0
        self._mtimes = self._scan()

    def changed(self) -> bool:
        """True once after any ``*.py`` file under the root was added, removed or modified."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + INTERVAL
        mtimes = self._scan()
        if mtimes == self._mtimes:
            return False
        self._mtimes = mtimes
        return True

    def _scan(self) -> dict[str, float]:
        mtimes: dict[str, float] = {}
        for directory, dirs, files in os.walk(self.root):
            dirs[:] = [name for name in dirs if name not in SKIP_DIRS and not name.startswith(".")]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    try:
                        mtimes[path] = os.stat(path).st_mtime
                    except OSError:
                        continue
                    if len(mtimes) >= MAX_FILES:
                        return mtimes
        return mtimes
