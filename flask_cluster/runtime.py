"""What this process is in the cluster. The worker fills it in after the fork.

The extension (which views call) reads it; nothing here imports the worker or the master, so
the dependency arrows stay one-way: ``worker -> runtime <- extension``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .wire import Answer


class Messenger(Protocol):
    """How a worker reaches its siblings (implemented by the worker's message pump)."""

    def broadcast(self, topic: str, payload: bytes, include_self: bool) -> None: ...

    def gather(self, topic: str, payload: bytes, timeout: float) -> list[Answer]: ...


@dataclass
class WorkerRuntime:
    worker_id: int
    messenger: Messenger
    count: Callable[[], int]  # the worker count the master aims for now (shared memory)

    @property
    def worker_count(self) -> int:
        return self.count()


current: WorkerRuntime | None = None
