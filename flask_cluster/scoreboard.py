"""Shared memory the master and its workers both see: heartbeats and counters, no syscalls.

The master maps it before the first fork. Each worker process owns one slot (assigned by the
master, so a worker being replaced and its replacement never share one) and writes plain
integers into it; the master reads them for liveness, ``least-busy`` and ``status``.
Single-writer per field, aligned 8-byte stores: no locks needed.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Collection

from .request_counters import COUNTER_WORDS

FIELDS = ("pid", "heartbeat_ms", "requests", "in_flight", "started_ms", "rss_kib", "received",
          "connections", "hand_back", "free_since_ms", "slow_ms", "request_started_us")
PID, HEARTBEAT_MS, REQUESTS, IN_FLIGHT, STARTED_MS, RSS_KIB, RECEIVED, CONNECTIONS, HAND_BACK, \
    FREE_SINCE_MS, SLOW_MS, REQUEST_STARTED_US = range(len(FIELDS))
# HAND_BACK is the master's to write: set before it retires the worker on purpose (a reload, a
# renewal, a scale down), so the worker hands its kept-alive connections back instead of
# closing them (worker/migration.py). Written before the SIGTERM, so the worker sees it.
# FREE_SINCE_MS: when the worker's last request ended; SLOW_MS: when it last ended one that
# worker/spread.py counts slow (SLOW of CPU, or HELD by the clock; spread.py reads the others').
# REQUEST_STARTED_US: when its current request started, in microseconds of the monotonic clock
# (--threads 1, written by worker/spread.py; the master's choice reads it, master/choice.py).
# A worker whose FREE_SINCE_MS is this old while it serves nothing is waiting for work, not
# between two requests (two epoll ticks): the workers read it to find a better home for a
# kept-alive connection (worker/spread.py), the master to take its listener back from the
# workers (master/dispatch.py).
IDLE_MS = 2
SLOT_WORDS = 16  # room to grow without moving slots; two cache lines, so slots never share one
HEADER_WORDS = 8
WORKER_COUNT = 0  # header word: the number of workers the master is aiming for
BROKER_FULL = 1  # header word: 1 while the master holds --broker-buffer unsent broadcasts
# Header word: connections the master holds because no worker has room (master/choice.py);
# while it is not 0 a worker says wire.Free the moment it is free.
HOLDING = BROKER_FULL + 1
# Header word: 1 while the master leaves its listener to the workers (round-robin and
# least-busy with --threads 1, every worker busy): each accepts itself when free
# (worker/accepting.py).
WORKERS_ACCEPT = HOLDING + 1
# After the slots, one block of COUNTER_WORDS per slot: the request counters of --metrics
# (request_counters.py), kept apart so the slots' own layout never moves for them.


def now_ms() -> int:
    """CLOCK_MONOTONIC in milliseconds: one clock for every process on the machine."""
    return int(time.monotonic() * 1000)


class Scoreboard:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, 8 * (HEADER_WORDS + slots * (SLOT_WORDS + COUNTER_WORDS)))
        self.words = memoryview(self._map).cast("q")

    def base(self, slot: int) -> int:
        return HEADER_WORDS + slot * SLOT_WORDS

    def counters_base(self, slot: int) -> int:
        """Where ``slot``'s request counters start (offsets in request_counters.py)."""
        return HEADER_WORDS + self.slots * SLOT_WORDS + slot * COUNTER_WORDS

    def counters(self, slot: int) -> list[int]:
        base = self.counters_base(slot)
        return self.words[base:base + COUNTER_WORDS].tolist()

    def reset(self, slot: int, pid: int) -> None:
        base = self.base(slot)
        for offset in range(SLOT_WORDS):
            self.words[base + offset] = 0
        counters = self.counters_base(slot)
        for offset in range(COUNTER_WORDS):
            self.words[counters + offset] = 0
        now = now_ms()
        self.words[base + PID] = pid
        self.words[base + HEARTBEAT_MS] = now
        self.words[base + STARTED_MS] = now

    def get(self, slot: int, field: int) -> int:
        return self.words[self.base(slot) + field]

    def set(self, slot: int, field: int, value: int) -> None:
        self.words[self.base(slot) + field] = value

    @property
    def worker_count(self) -> int:
        return self.words[WORKER_COUNT]

    @worker_count.setter
    def worker_count(self, count: int) -> None:
        self.words[WORKER_COUNT] = count

    @property
    def broker_full(self) -> bool:
        return self.words[BROKER_FULL] != 0

    @broker_full.setter
    def broker_full(self, full: bool) -> None:
        self.words[BROKER_FULL] = int(full)

    @property
    def holding(self) -> int:
        return self.words[HOLDING]

    @holding.setter
    def holding(self, count: int) -> None:
        self.words[HOLDING] = count

    @property
    def workers_accept(self) -> bool:
        return self.words[WORKERS_ACCEPT] != 0

    @workers_accept.setter
    def workers_accept(self, on: bool) -> None:
        self.words[WORKERS_ACCEPT] = int(on)

    def snapshot(self, slot: int) -> dict[str, int]:
        base = self.base(slot)
        return {name: self.words[base + index] for index, name in enumerate(FIELDS)}

    def free_slot(self, used: Collection[int]) -> int:
        for slot in range(self.slots):
            if slot not in used:
                return slot
        raise RuntimeError("no free scoreboard slot")
