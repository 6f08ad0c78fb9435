"""The supervision policy: which workers should run, and what to do when one changes.

Plain data and functions, no I/O: the master feeds in what happened (a worker forked, became
ready, exited, went silent; an operator asked for a reload, a scale or a stop; time passed) and
performs the actions that come back. Time is an argument, never read here, so every transition
is a unit test (tests/test_roster.py).

Whatever the event, :meth:`Roster._reconcile` compares the slots wanted (``0 .. target-1``) with
the workers running and acts, as gunicorn's ``manage_workers`` does: it spawns into an empty slot
once its crash backoff has passed, starts a successor for a worker being renewed or reloaded,
retires a predecessor once its successor is ready, and retires workers above the target. Calling
it twice changes nothing the second time.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections import Counter
from dataclasses import dataclass

from .actions import Abandon, Action, Exit, Kill, Log, Signal, Spawn, StopAccepting
from .backoff import Backoff

EXIT_APP_LOAD_ERROR = 3
EXIT_CRASH_LOOP = 4
MAX_BOOT_CRASHES = 5  # workers dying before they are ready, in a row, before the master gives up
KILL_GRACE = 2.0  # after the polite signal, how long before SIGKILL


class State(enum.Enum):
    BOOTING = "booting"    # forked, loading the app; holds its slot
    STALLED = "stalled"    # booting past --timeout, told to stop; its exit is a boot failure
    READY = "ready"        # in rotation: gets connections and messages
    RENEWING = "renewing"  # in rotation while a successor boots (max-requests, max-memory)
    RETIRING = "retiring"  # told to finish and exit; its exit is expected
    STUCK = "stuck"        # silent or far behind: signalled, killed soon, successor started
    LOST = "lost"          # its hand-off channel broke: out of rotation; its exit is a crash

    @property
    def label(self) -> str:
        """The word ``cluster-ctl status`` shows."""
        return _LABELS.get(self, self.value)


_LABELS = {State.STALLED: "booting", State.RENEWING: "ready", State.STUCK: "gone",
           State.LOST: "gone"}
SERVING = frozenset({State.READY, State.RENEWING})
STARTING = frozenset({State.BOOTING, State.STALLED})
HOLDS_SLOT = frozenset({*STARTING, *SERVING, State.LOST})
# Signals a process gets from its own faults, not from someone else's kill.
SELF_INFLICTED = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                            signal.SIGABRT, signal.SIGSYS})
CURRENT = frozenset({State.BOOTING, State.READY, State.RENEWING})  # what a reload replaces


@dataclass(frozen=True)
class Death:
    """A worker's decoded exit status."""

    code: int | None = None
    signal: int | None = None
    boot_error: bool = False  # it exited with the worker's "cannot load the app" code

    def describe(self) -> str:
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by {self.signal}"
        return f"exit code {self.code}"


# -- the roster ------------------------------------------------------------------------------


@dataclass
class Member:
    """One worker process as the policy sees it."""

    worker_id: int
    pid: int
    started: float
    generation: int  # a reload wants every worker of an older generation replaced
    serial: int  # spawn order: in a slot, the highest is the newest
    state: State = State.BOOTING
    kill_at: float | None = None  # SIGKILL if still alive then
    boot_error: str | None = None  # the reason it reported for failing to boot
    over_memory: int = 0  # consecutive samples above --max-memory

    def __repr__(self) -> str:
        return f"worker {self.worker_id} (pid {self.pid})"


class Roster:
    def __init__(self, target: int, *, timeout: float, graceful_timeout: float,
                 max_memory_mib: int = 0, max_workers: int = 64) -> None:
        self.target = target
        self.timeout = timeout
        self.graceful_timeout = graceful_timeout
        self.max_memory_mib = max_memory_mib
        self.max_workers = max_workers
        self.members: dict[int, Member] = {}  # by pid
        self.restarts: dict[int, int] = {}  # worker_id -> restarts so far
        # Replacements by why (crash, hung, max-requests, max-memory, reload), for --metrics.
        self.restart_reasons: Counter[str] = Counter()
        self.respawn_at: dict[int, float] = {}  # worker_id -> not before then (crash backoff)
        self.backoff = Backoff()
        self.boot_crashes = 0
        self.generation = 0
        self.reloading = False
        self.stopping = False
        self.stop_deadline = 0.0
        self.last_error: str | None = None  # the last reload or boot failure, for status
        self._serial = 0

    # -- queries ----------------------------------------------------------------------------

    def serving(self) -> list[Member]:
        """Workers in rotation, in worker-id order: who gets connections and messages."""
        return sorted((m for m in self.members.values() if m.state in SERVING),
                      key=lambda m: m.worker_id)

    def in_slot(self, worker_id: int) -> list[Member]:
        """The workers of one slot, oldest first."""
        return sorted((m for m in self.members.values() if m.worker_id == worker_id),
                      key=lambda m: m.serial)

    @property
    def finished(self) -> bool:
        return self.stopping and not self.members

    # -- events -----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        return self._reconcile(now)

    def add(self, worker_id: int, pid: int, now: float) -> Member:
        """The master forked ``pid`` for a :class:`Spawn`."""
        self._serial += 1
        member = Member(worker_id, pid, now, self.generation, self._serial)
        self.members[pid] = member
        return member

    def ready(self, pid: int, now: float) -> list[Action]:
        member = self.members.get(pid)
        if member is None or member.state is not State.BOOTING:
            return []
        member.state = State.READY
        self.boot_crashes = 0
        self.backoff.reset(member.worker_id)
        return [Log(logging.INFO, f"{member} ready"), *self._reconcile(now)]

    def boot_failed(self, pid: int, reason: str) -> None:
        """The worker reported why it cannot boot; its exit follows."""
        member = self.members.get(pid)
        if member is not None:
            member.boot_error = reason

    def exited(self, pid: int, death: Death, now: float) -> list[Action]:
        member = self.members.pop(pid, None)
        if member is None:
            return []
        how = death.describe()
        if self.stopping or member.state is State.RETIRING:
            return [Log(logging.INFO, f"{member} exited ({how})")]
        if member.state is State.STUCK:  # its successor is on its way already
            return self._reconcile(now)
        slot = member.worker_id
        booting = member.state in STARTING
        if booting and _failed_to_boot(member, death):
            return self._boot_failed(member, death, now)
        # Killed from outside before it was ready (the OOM killer, an operator), or died after
        # it served (a client may have caused it): the app can boot, so no backoff and no count
        # toward the crash-loop exit. Respawn at once.
        self.restarts[slot] = self.restarts.get(slot, 0) + 1
        self.restart_reasons["crash"] += 1
        when = "before it was ready" if booting else f"after {now - member.started:.1f}s"
        return [Log(logging.ERROR, f"{member} died {when} ({how}); respawning at once"),
                *self._reconcile(now)]

    def _boot_failed(self, member: Member, death: Death, now: float) -> list[Action]:
        """A worker that could not boot by its own doing: while others serve, its slot waits
        out a backoff; with none serving, a reported failure stops the master at once and
        other failures do after MAX_BOOT_CRASHES in a row."""
        slot, how = member.worker_id, death.describe()
        if death.boot_error:
            reason = member.boot_error or "see the worker's traceback above"
            failure = f"worker {slot} failed to boot: {reason}"
        else:
            failure = f"worker {slot} died before it was ready ({how})"
        if self.serving():
            return self._boot_failed_while_serving(member, failure, now)
        if death.boot_error:
            return self._fail(EXIT_APP_LOAD_ERROR, failure, now)
        self.boot_crashes += 1
        if self.boot_crashes >= MAX_BOOT_CRASHES:
            return self._fail(EXIT_CRASH_LOOP, f"workers keep dying before they are ready "
                                               f"(last: worker {slot}, {how})", now)
        self.restarts[slot] = self.restarts.get(slot, 0) + 1
        self.restart_reasons["crash"] += 1
        return [Log(logging.ERROR, f"{member} died before it was ready ({how}); respawning at "
                                   f"once ({self.boot_crashes} of {MAX_BOOT_CRASHES})"),
                *self._reconcile(now)]

    def hung(self, pid: int, now: float) -> list[Action]:
        """Silent past --timeout, or far behind on its messages: stop it (politely, then not)
        and start its successor now."""
        member = self.members.get(pid)
        if member is None or member.state in (State.RETIRING, State.STUCK):
            return []
        member.state = State.STUCK
        member.kill_at = now + KILL_GRACE
        self.restarts[member.worker_id] = self.restarts.get(member.worker_id, 0) + 1
        self.restart_reasons["hung"] += 1
        return [Signal(pid, signal.SIGTERM), Abandon(pid), *self._reconcile(now)]

    def lost(self, pid: int) -> list[Action]:
        """A hand-off found its channel broken: it is dying; stop choosing it."""
        member = self.members.get(pid)
        if member is None or member.state not in SERVING:
            return []
        member.state = State.LOST
        return [Log(logging.WARNING, f"{member} is gone; no more connections for it")]

    def recycle(self, pid: int, why: str, now: float, *, reason: str) -> list[Action]:
        """Graceful replacement (--max-requests, --max-memory): a successor first, the old
        worker retires once the successor is ready. ``reason``: its restart reason."""
        member = self.members.get(pid)
        if member is None or member.state is not State.READY or self.stopping:
            return []
        member.state = State.RENEWING
        self.restart_reasons[reason] += 1
        return [Log(logging.INFO, f"{member} {why}: replacing it"), *self._reconcile(now)]

    def memory(self, pid: int, rss_kib: int, now: float) -> list[Action]:
        """One --max-memory sample: renew a worker above the limit at two samples in a row."""
        member = self.members.get(pid)
        if not self.max_memory_mib or member is None or member.state is not State.READY:
            return []
        over = rss_kib > self.max_memory_mib * 1024
        member.over_memory = member.over_memory + 1 if over else 0
        if member.over_memory < 2:
            return []
        return self.recycle(pid, f"uses {rss_kib // 1024} MiB, above --max-memory "
                                 f"{self.max_memory_mib}", now, reason="max-memory")

    def reload(self, now: float) -> list[Action]:
        """Replace every worker, one at a time, each only after its successor is ready."""
        if self.stopping:
            return []
        actions: list[Action] = []
        if self.reloading:
            actions.append(Log(logging.INFO, "reload requested during a reload: restarting it"))
        actions.append(Log(logging.INFO, f"rolling reload of {self.target} workers"))
        self.generation += 1
        self.reloading = True
        return actions + self._reconcile(now)

    def scale(self, count: int, now: float) -> list[Action]:
        """Run ``count`` workers; raises ValueError outside ``1 .. max_workers``."""
        if self.stopping:
            return []
        if not 1 <= count <= self.max_workers:
            raise ValueError(f"scale to between 1 and {self.max_workers} workers, not {count}")
        if count == self.target:
            return []
        previous, self.target = self.target, count
        return [Log(logging.INFO, f"scaling from {previous} to {count} workers"),
                *self._reconcile(now)]

    def stop(self, *, graceful: bool, now: float) -> list[Action]:
        if self.stopping and graceful:
            return []
        actions: list[Action] = [Log(logging.INFO, f"{'graceful' if graceful else 'fast'} stop")]
        if not self.stopping:
            actions.append(StopAccepting())
        self.stopping = True
        self.reloading = False
        self.respawn_at.clear()
        grace = self.graceful_timeout if graceful else 0.0
        self.stop_deadline = now + grace + KILL_GRACE
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        return actions + [Signal(pid, sig) for pid in self.members]

    def tick(self, now: float) -> list[Action]:
        """Time passed: kill what did not stop in time, stop what does not boot, respawn what
        waited out its backoff."""
        actions: list[Action] = []
        for member in self.members.values():
            if member.kill_at is not None and now >= member.kill_at:
                actions += [Log(logging.WARNING, f"{member} did not stop in time: SIGKILL"),
                            Kill(member.pid)]
                member.kill_at = None
            elif member.state is State.BOOTING and now - member.started > self.timeout:
                # As gunicorn does, booting counts against --timeout: a worker stuck importing
                # the app is stopped, and its exit is handled as a failure to boot.
                actions += [Log(logging.ERROR, f"{member} did not boot within "
                                               f"{self.timeout:g}s: stopping it"),
                            Signal(member.pid, signal.SIGTERM)]
                member.state = State.STALLED
                member.kill_at = now + KILL_GRACE
        if self.stopping and now >= self.stop_deadline:
            actions += [Kill(pid) for pid in self.members]
        return actions + self._reconcile(now)

    # -- policy -----------------------------------------------------------------------------

    def _reconcile(self, now: float) -> list[Action]:
        if self.stopping:
            return []
        actions: list[Action] = []
        for removed in [slot for slot in self.respawn_at if slot >= self.target]:
            del self.respawn_at[removed]
        for removed in [slot for slot in self.restarts if slot >= self.target]:
            del self.restarts[removed]
        # Each pass looks at every slot: a tick comes ten times a second, so group once.
        slots: dict[int, list[Member]] = {slot: [] for slot in range(self.target)}
        for member in sorted(self.members.values(), key=lambda m: m.serial):
            slots.setdefault(member.worker_id, []).append(member)
        reload_busy = any(self._stale(slot, members) and _booting(members)
                          for slot, members in slots.items())
        # With no worker serving, a backoff would leave the cluster without one: try now.
        waits = any(m.state in SERVING for m in self.members.values())
        for slot, members in sorted(slots.items()):
            if slot >= self.target:  # scaled down
                actions += [a for m in members if m.state in HOLDS_SLOT for a in self._retire(m, now)]
                continue
            serving = [m for m in members if m.state in SERVING]
            for older in serving[:-1]:  # a successor is ready: its predecessors finish and go
                actions += self._retire(older, now)
            current = serving[-1] if serving else None
            if _booting(members):
                continue
            if current is None:
                if any(m.state is State.LOST for m in members) \
                        or waits and now < self.respawn_at.get(slot, now):
                    continue
                self.respawn_at.pop(slot, None)
                actions.append(Spawn(slot))
            elif current.state is State.RENEWING:
                actions.append(Spawn(slot))
            elif current.generation < self.generation and not reload_busy:
                reload_busy = True
                self.restart_reasons["reload"] += 1
                actions.append(Spawn(slot))
        if self.reloading and not reload_busy \
                and not any(self._stale(slot, members) for slot, members in slots.items()):
            self.reloading = False
            actions.append(Log(logging.INFO, "reload complete"))
        return actions

    def _stale(self, slot: int, members: list[Member]) -> bool:
        """Slot ``slot`` still serves code from before the current reload."""
        return slot < self.target and any(m.state in CURRENT and m.generation < self.generation
                                          for m in members)

    def _retire(self, member: Member, now: float) -> list[Action]:
        """Take ``member`` out of rotation, then ask it to finish gracefully, handing its
        kept-alive connections to the workers that stay."""
        member.state = State.RETIRING
        member.kill_at = now + self.graceful_timeout + KILL_GRACE
        return [Signal(member.pid, signal.SIGTERM, hand_back=True)]

    def _boot_failed_while_serving(self, member: Member, failure: str,
                                   now: float) -> list[Action]:
        """A reload, replacement or new worker whose code does not come up: the running workers
        keep serving (the reload and renewals in progress are given up); the reason is logged
        and shown by ``cluster-ctl status``."""
        self.last_error = failure
        self.reloading = False
        for other in self.members.values():
            other.generation = self.generation
            if other.state is State.RENEWING:
                other.state = State.READY
        slot = member.worker_id
        if not any(m.state in SERVING for m in self.in_slot(slot)):
            self.respawn_at[slot] = now + self.backoff.delay(slot, now - member.started)
        return [Log(logging.ERROR, f"{failure}; the running workers keep serving"),
                *self._reconcile(now)]

    def _fail(self, code: int, reason: str, now: float) -> list[Action]:
        return [Exit(code, reason), *self.stop(graceful=False, now=now)]


def _booting(members: list[Member]) -> bool:
    return any(m.state in STARTING for m in members)


def _failed_to_boot(member: Member, death: Death) -> bool:
    """A death before ready that the worker brought on itself: a reported failure, its own
    exit code or fault, or a boot that outlasted --timeout. Exit code 0 is how a booting worker
    obeys TERM or QUIT (from outside, or the master's own)."""
    if member.state is State.STALLED or death.boot_error:
        return True
    if death.signal is not None:
        return death.signal in SELF_INFLICTED
    return death.code != 0
