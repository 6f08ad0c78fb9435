"""The supervision policy without processes: events in, actions out, time passed in."""

from __future__ import annotations

import signal

import pytest

from flask_cluster.master.actions import Abandon, Action, Exit, Kill, Log, Signal, Spawn, StopAccepting
from flask_cluster.master.roster import (
    EXIT_APP_LOAD_ERROR,
    EXIT_CRASH_LOOP,
    KILL_GRACE,
    MAX_BOOT_CRASHES,
    Death,
    Roster,
    State,
)

TIMEOUT = 30.0
GRACE = 5.0
CRASH = Death(code=1)
BOOT_ERROR = Death(code=3, boot_error=True)
SIGKILLED = Death(signal=signal.SIGKILL)


class Sim:
    """Performs the roster's actions as the master would, with made-up pids."""

    def __init__(self, target: int = 2, *, max_memory_mib: int = 0) -> None:
        self.roster = Roster(target, timeout=TIMEOUT, graceful_timeout=GRACE,
                             max_memory_mib=max_memory_mib, max_workers=8)
        self.now = 0.0
        self._pid = 100
        self.spawned: list[tuple[int, int]] = []  # (worker_id, pid), every spawn so far

    def do(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, Spawn):
                self._pid += 1
                self.roster.add(action.worker_id, self._pid, self.now)
                self.spawned.append((action.worker_id, self._pid))
        return actions

    def boot(self) -> dict[int, int]:
        """Start the cluster and make every worker ready; worker id -> pid."""
        self.do(self.roster.start(self.now))
        for _, pid in list(self.spawned):
            self.do(self.roster.ready(pid, self.now))
        return self.pids()

    def pids(self) -> dict[int, int]:
        return {m.worker_id: m.pid for m in self.roster.serving()}

    def newest(self, worker_id: int) -> int:
        return self.roster.in_slot(worker_id)[-1].pid

    def state(self, pid: int) -> State:
        return self.roster.members[pid].state

    def at(self, now: float) -> list[Action]:
        self.now = now
        return self.do(self.roster.tick(now))


def spawns(actions: list[Action]) -> list[int]:
    return [a.worker_id for a in actions if isinstance(a, Spawn)]


def signals(actions: list[Action]) -> list[tuple[int, int]]:
    return [(a.pid, a.sig) for a in actions if isinstance(a, Signal)]


def kills(actions: list[Action]) -> list[int]:
    return [a.pid for a in actions if isinstance(a, Kill)]


def logged(actions: list[Action]) -> str:
    return "\n".join(a.message for a in actions if isinstance(a, Log))


# -- boot and ready -----------------------------------------------------------------------------


def test_start_spawns_every_slot_once_and_reconciling_again_changes_nothing() -> None:
    sim = Sim(3)
    assert spawns(sim.do(sim.roster.start(0.0))) == [0, 1, 2]
    assert sim.at(0.1) == []
    assert all(m.state is State.BOOTING for m in sim.roster.members.values())
    assert sim.roster.serving() == []


def test_ready_puts_a_worker_in_rotation_in_worker_id_order() -> None:
    sim = Sim(2)
    sim.do(sim.roster.start(0.0))
    (_, first), (_, second) = sim.spawned
    assert "ready" in logged(sim.do(sim.roster.ready(second, 1.0)))
    sim.do(sim.roster.ready(first, 1.0))
    assert [m.pid for m in sim.roster.serving()] == [first, second]
    assert sim.roster.ready(first, 2.0) == []  # said twice: nothing new


def test_a_worker_that_does_not_boot_within_the_timeout_is_stopped_then_killed() -> None:
    sim = Sim(1)
    sim.do(sim.roster.start(0.0))
    pid = sim.spawned[0][1]
    assert sim.at(TIMEOUT) == []
    actions = sim.at(TIMEOUT + 0.1)
    assert signals(actions) == [(pid, signal.SIGTERM)] and "did not boot within 30s" in logged(actions)
    assert kills(sim.at(TIMEOUT + 0.1 + KILL_GRACE)) == [pid]


# -- deaths: which back off, which stop the master ---------------------------------------------


@pytest.mark.parametrize("death", [CRASH, SIGKILLED, Death(signal=signal.SIGSEGV)],
                         ids=["exit-1", "SIGKILL", "SIGSEGV"])
def test_a_worker_that_served_is_respawned_at_once_into_its_slot_however_it_died(
        death: Death) -> None:
    """A client can crash a worker (issue 10): that must not slow the cluster down."""
    sim = Sim(2)
    sim.boot()
    for crash in range(1, 11):
        pid = sim.pids()[0]
        actions = sim.do(sim.roster.exited(pid, death, sim.now + 0.2))
        sim.now += 0.2
        assert spawns(actions) == [0], crash  # the same worker id, no wait
        assert "respawning at once" in logged(actions)
        assert not [a for a in actions if isinstance(a, Exit)]
        sim.do(sim.roster.ready(sim.newest(0), sim.now))
    assert sim.roster.restarts == {0: 10} and sim.roster.respawn_at == {}


@pytest.mark.parametrize("death", [SIGKILLED, Death(signal=signal.SIGTERM), Death(code=0)],
                         ids=["SIGKILL", "SIGTERM", "obeyed-TERM"])
def test_workers_killed_from_outside_before_ready_never_stop_the_master(death: Death) -> None:
    """Kill each worker as soon as it appears: respawned at once, every time."""
    sim = Sim(2)
    sim.do(sim.roster.start(0.0))
    for kill in range(40):
        victim = sim.newest(kill % 2)
        actions = sim.do(sim.roster.exited(victim, death, sim.now + 0.01))
        sim.now += 0.01
        assert spawns(actions) == [kill % 2]
        assert not [a for a in actions if isinstance(a, Exit)]
    assert not sim.roster.stopping and sim.roster.last_error is None
    assert sim.roster.boot_crashes == 0


@pytest.mark.parametrize("death", [CRASH, Death(signal=signal.SIGSEGV)], ids=["exit-1", "SIGSEGV"])
def test_workers_failing_to_boot_by_their_own_doing_stop_the_master(death: Death) -> None:
    """No worker serves, so each is retried at once; five in a row is a crash loop."""
    sim = Sim(1)
    sim.do(sim.roster.start(0.0))
    for crash in range(1, MAX_BOOT_CRASHES + 1):
        actions = sim.do(sim.roster.exited(sim.newest(0), death, sim.now + 0.05))
        sim.now += 0.05
        if crash < MAX_BOOT_CRASHES:
            assert spawns(actions) == [0]
            assert not [a for a in actions if isinstance(a, Exit)]
        else:
            assert Exit(EXIT_CRASH_LOOP, "workers keep dying before they are ready "
                                         f"(last: worker 0, {death.describe()})") in actions
    assert sim.roster.stopping and sim.roster.finished


def test_a_boot_that_outlasts_the_timeout_counts_as_a_failure_to_boot() -> None:
    sim = Sim(1)
    sim.do(sim.roster.start(0.0))
    for _ in range(MAX_BOOT_CRASHES):
        pid = sim.newest(0)
        actions = sim.at(sim.now + TIMEOUT + 0.1)
        assert signals(actions) == [(pid, signal.SIGTERM)]
        assert "did not boot within 30s" in logged(actions)
        assert kills(sim.at(sim.now + KILL_GRACE)) == [pid]
        actions = sim.do(sim.roster.exited(pid, SIGKILLED, sim.now))
    assert [a for a in actions if isinstance(a, Exit)][0].code == EXIT_CRASH_LOOP


def test_a_ready_worker_resets_the_crash_loop_count() -> None:
    sim = Sim(1)
    sim.do(sim.roster.start(0.0))
    for _ in range(MAX_BOOT_CRASHES - 1):
        sim.do(sim.roster.exited(sim.newest(0), CRASH, sim.now))
    sim.do(sim.roster.ready(sim.newest(0), sim.now))
    assert sim.roster.boot_crashes == 0


def test_a_reported_boot_failure_while_others_serve_backs_off_doubling() -> None:
    sim = Sim(3)
    sim.boot()
    sim.do(sim.roster.exited(sim.pids()[2], SIGKILLED, 1.0))  # respawned at once...
    sim.now = 1.0
    delays = []
    for _ in range(4):  # ... into code that no longer loads (a deploy went wrong)
        pid = sim.newest(2)
        actions = sim.do(sim.roster.exited(pid, BOOT_ERROR, sim.now + 0.5))
        sim.now += 0.5
        assert spawns(actions) == [] and "the running workers keep serving" in logged(actions)
        delay = sim.roster.respawn_at[2] - sim.now
        delays.append(round(delay, 3))
        assert spawns(sim.at(sim.now + delay - 0.01)) == []
        assert spawns(sim.at(sim.now + 0.01)) == [2]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    assert not sim.roster.stopping
    # Once it boots, the next failure starts from the first delay again.
    sim.do(sim.roster.ready(sim.newest(2), sim.now))
    sim.do(sim.roster.exited(sim.pids()[2], SIGKILLED, sim.now))
    sim.do(sim.roster.exited(sim.newest(2), BOOT_ERROR, sim.now + 0.5))
    assert round(sim.roster.respawn_at[2] - sim.now - 0.5, 3) == 0.1


def test_no_backoff_leaves_the_cluster_without_a_ready_worker() -> None:
    sim = Sim(2)
    pids = sim.boot()
    sim.do(sim.roster.exited(pids[1], SIGKILLED, 1.0))
    sim.do(sim.roster.exited(sim.newest(1), BOOT_ERROR, 1.5))  # slot 1 waits 0.1 s...
    assert 1 in sim.roster.respawn_at
    sim.now = 1.51
    actions = sim.do(sim.roster.exited(pids[0], SIGKILLED, 1.51))  # ... the last one is gone
    assert sorted(spawns(actions)) == [0, 1]  # both now: someone may boot


def test_an_app_that_cannot_load_stops_the_master_with_its_reason() -> None:
    sim = Sim(2)
    sim.do(sim.roster.start(0.0))
    pid = sim.spawned[0][1]
    sim.roster.boot_failed(pid, "ImportError: no module named nope")
    actions = sim.do(sim.roster.exited(pid, BOOT_ERROR, 0.5))
    assert actions[0] == Exit(EXIT_APP_LOAD_ERROR,
                              "worker 0 failed to boot: ImportError: no module named nope")
    other = sim.spawned[1][1]
    assert StopAccepting() in actions and (other, signal.SIGQUIT) in signals(actions)


# -- hung and lost workers ----------------------------------------------------------------------


def test_a_hung_worker_is_signalled_replaced_at_once_then_killed() -> None:
    sim = Sim(2)
    hung = sim.boot()[1]
    actions = sim.do(sim.roster.hung(hung, 10.0))
    assert signals(actions) == [(hung, signal.SIGTERM)] and Abandon(hung) in actions
    assert spawns(actions) == [1]
    assert hung not in [m.pid for m in sim.roster.serving()]
    assert sim.roster.hung(hung, 10.5) == []  # once is enough
    assert kills(sim.at(10.0 + KILL_GRACE - 0.01)) == []
    assert kills(sim.at(10.0 + KILL_GRACE)) == [hung]
    # Its exit is expected: no second successor, no backoff.
    assert spawns(sim.do(sim.roster.exited(hung, SIGKILLED, 12.5))) == []
    assert sim.roster.respawn_at == {}
    assert sim.roster.restarts == {1: 1}


def test_a_lost_worker_leaves_rotation_and_is_respawned_when_reaped() -> None:
    sim = Sim(2)
    lost = sim.boot()[0]
    assert "no more connections" in logged(sim.roster.lost(lost))
    assert [m.worker_id for m in sim.roster.serving()] == [1]
    assert sim.at(1.0) == []  # its slot is still held until it is reaped
    assert spawns(sim.do(sim.roster.exited(lost, CRASH, 1.0))) == [0]


# -- rolling reload -----------------------------------------------------------------------------


def test_rolling_reload_replaces_one_worker_at_a_time_after_its_successor_is_ready() -> None:
    sim = Sim(3)
    old = sim.boot()
    assert spawns(sim.do(sim.roster.reload(1.0))) == [0]
    assert sim.at(1.5) == []  # waits for the successor
    for worker_id in range(3):
        successor = sim.newest(worker_id)
        actions = sim.do(sim.roster.ready(successor, 2.0 + worker_id))
        assert signals(actions) == [(old[worker_id], signal.SIGTERM)]
        assert sim.state(old[worker_id]) is State.RETIRING
        if worker_id < 2:
            assert spawns(actions) == [worker_id + 1] and sim.roster.reloading
        else:
            assert spawns(actions) == [] and "reload complete" in logged(actions)
    assert not sim.roster.reloading
    for pid in old.values():  # retired workers' exits are expected
        assert spawns(sim.do(sim.roster.exited(pid, Death(code=0), 6.0))) == []
    assert set(sim.pids().values()).isdisjoint(old.values())


def test_a_retiring_worker_is_killed_after_the_graceful_timeout() -> None:
    sim = Sim(1)
    old = sim.boot()[0]
    sim.do(sim.roster.reload(0.0))
    sim.do(sim.roster.ready(sim.newest(0), 1.0))
    assert kills(sim.at(1.0 + GRACE + KILL_GRACE - 0.1)) == []
    assert kills(sim.at(1.0 + GRACE + KILL_GRACE)) == [old]


def test_reload_during_a_reload_starts_over_without_a_second_successor() -> None:
    sim = Sim(2)
    sim.boot()
    sim.do(sim.roster.reload(1.0))
    actions = sim.do(sim.roster.reload(1.1))
    assert "restarting it" in logged(actions) and spawns(actions) == []
    # A successor of the first reload is older than the second: worker 0 is replaced again.
    assert spawns(sim.do(sim.roster.ready(sim.newest(0), 2.0))) == [0]


def test_reload_whose_new_code_fails_to_boot_keeps_the_old_workers_serving() -> None:
    """Today's behaviour, kept: the first successor fails, the reload is given up (no "reload
    complete"), the old workers keep serving, nothing is respawned for the failed one (its slot
    still has a ready worker), status shows the reason; the next reload starts from scratch."""
    sim = Sim(2)
    old = sim.boot()
    sim.do(sim.roster.reload(1.0))
    successor = sim.newest(0)
    sim.roster.boot_failed(successor, "SyntaxError: invalid syntax (app.py, line 3)")
    actions = sim.do(sim.roster.exited(successor, BOOT_ERROR, 1.5))
    assert not [a for a in actions if isinstance(a, Exit)]
    assert spawns(actions) == [] and "reload complete" not in logged(actions)
    assert "the running workers keep serving" in logged(actions)
    assert sim.roster.last_error == \
        "worker 0 failed to boot: SyntaxError: invalid syntax (app.py, line 3)"
    assert not sim.roster.reloading and sim.pids() == old
    assert sim.at(60.0) == []
    assert spawns(sim.do(sim.roster.reload(61.0))) == [0]


def test_a_reload_successor_killed_from_outside_is_respawned_and_the_reload_goes_on() -> None:
    sim = Sim(2)
    old = sim.boot()
    sim.do(sim.roster.reload(1.0))
    actions = sim.do(sim.roster.exited(sim.newest(0), SIGKILLED, 1.2))
    assert spawns(actions) == [0] and sim.roster.reloading and sim.roster.last_error is None
    assert spawns(sim.do(sim.roster.ready(sim.newest(0), 2.0))) == [1]
    assert sim.state(old[0]) is State.RETIRING


# -- scale ---------------------------------------------------------------------------------------


def test_scale_up_spawns_new_slots_and_scale_down_retires_the_highest() -> None:
    sim = Sim(2)
    old = sim.boot()
    actions = sim.do(sim.roster.scale(4, 1.0))
    assert spawns(actions) == [2, 3] and "scaling from 2 to 4 workers" in logged(actions)
    for worker_id in (2, 3):
        sim.do(sim.roster.ready(sim.newest(worker_id), 2.0))
    four = sim.pids()
    actions = sim.do(sim.roster.scale(1, 3.0))
    assert sorted(signals(actions)) == sorted((four[i], signal.SIGTERM) for i in (1, 2, 3))
    assert sim.pids() == {0: old[0]}  # worker 0 is kept
    for worker_id in (1, 2, 3):
        assert spawns(sim.do(sim.roster.exited(four[worker_id], CRASH, 4.0))) == []
    assert sim.roster.scale(1, 5.0) == []
    with pytest.raises(ValueError, match="between 1 and 8"):
        sim.roster.scale(9, 5.0)


def test_scale_down_drops_a_pending_respawn_of_a_removed_slot() -> None:
    sim = Sim(2)
    sim.boot()
    sim.do(sim.roster.scale(3, 1.0))
    sim.do(sim.roster.exited(sim.newest(2), BOOT_ERROR, 1.0))
    assert 2 in sim.roster.respawn_at
    sim.do(sim.roster.scale(2, 1.01))
    assert sim.roster.respawn_at == {} and spawns(sim.at(20.0)) == []


# -- recycling -----------------------------------------------------------------------------------


def test_max_requests_recycling_starts_the_successor_first() -> None:
    sim = Sim(2)
    old = sim.boot()[1]
    actions = sim.do(sim.roster.recycle(old, "served its --max-requests", 1.0, reason="max-requests"))
    assert spawns(actions) == [1] and signals(actions) == []
    assert "served its --max-requests: replacing it" in logged(actions)
    assert old in [m.pid for m in sim.roster.serving()]  # keeps serving meanwhile
    assert sim.roster.recycle(old, "served its --max-requests", 1.1, reason="max-requests") == []
    actions = sim.do(sim.roster.ready(sim.newest(1), 2.0))
    assert signals(actions) == [(old, signal.SIGTERM)]
    assert sim.pids()[1] == sim.newest(1)


def test_max_memory_recycles_after_two_samples_in_a_row_above_the_limit() -> None:
    sim = Sim(1, max_memory_mib=60)
    pid = sim.boot()[0]
    assert sim.roster.memory(pid, 70 * 1024, 1.0) == []
    assert sim.roster.memory(pid, 50 * 1024, 2.0) == []  # back under: counts from zero
    assert sim.roster.memory(pid, 70 * 1024, 3.0) == []
    actions = sim.do(sim.roster.memory(pid, 70 * 1024, 4.0))
    assert spawns(actions) == [0] and "uses 70 MiB, above --max-memory 60" in logged(actions)


def test_a_renewing_worker_that_crashes_gets_no_second_successor() -> None:
    sim = Sim(1)
    old = sim.boot()[0]
    sim.do(sim.roster.recycle(old, "served its --max-requests", 1.0, reason="max-requests"))
    successor = sim.newest(0)
    sim.do(sim.roster.exited(old, CRASH, 1.5))
    assert spawns(sim.at(5.0)) == []
    sim.do(sim.roster.ready(successor, 5.0))
    assert sim.pids() == {0: successor}


def test_only_workers_retired_on_purpose_are_asked_to_hand_back_their_connections() -> None:
    """A reload, a renewal and a scale down retire with hand_back (their kept-alive connections
    go to the workers that stay); a stop and a hung worker's SIGTERM do not."""
    sim = Sim(2)
    old = sim.boot()

    def hand_backs(actions: list[Action]) -> list[tuple[int, bool]]:
        return [(a.pid, a.hand_back) for a in actions if isinstance(a, Signal)]

    sim.do(sim.roster.reload(1.0))
    assert hand_backs(sim.do(sim.roster.ready(sim.newest(0), 2.0))) == [(old[0], True)]
    renewing = sim.newest(0)
    sim.do(sim.roster.recycle(renewing, "served its --max-requests", 3.0, reason="max-requests"))
    sim.do(sim.roster.ready(sim.newest(1), 3.0))  # the reload goes on with worker 1
    assert hand_backs(sim.do(sim.roster.ready(sim.newest(0), 4.0))) == [(renewing, True)]
    assert hand_backs(sim.do(sim.roster.scale(1, 5.0))) == [(sim.newest(1), True)]
    hung = sim.newest(0)
    assert hand_backs(sim.do(sim.roster.hung(hung, 6.0))) == [(hung, False)]
    assert all(not hand_back for _, hand_back in hand_backs(
        sim.do(sim.roster.stop(graceful=True, now=7.0))))


# -- stop ----------------------------------------------------------------------------------------


def test_graceful_stop_signals_every_worker_respawns_nothing_and_kills_at_the_deadline() -> None:
    sim = Sim(2)
    pids = sim.boot()
    actions = sim.do(sim.roster.stop(graceful=True, now=1.0))
    assert StopAccepting() in actions and "graceful stop" in logged(actions)
    assert sorted(signals(actions)) == sorted((pid, signal.SIGTERM) for pid in pids.values())
    assert sim.roster.stop(graceful=True, now=1.5) == []
    assert sim.do(sim.roster.exited(pids[0], CRASH, 2.0)) == [
        Log(20, f"worker 0 (pid {pids[0]}) exited (exit code 1)")]
    assert sim.roster.reload(2.0) == [] and sim.roster.scale(4, 2.0) == []
    assert kills(sim.at(1.0 + GRACE + KILL_GRACE)) == [pids[1]]
    sim.do(sim.roster.exited(pids[1], SIGKILLED, 9.0))
    assert sim.roster.finished


def test_fast_stop_sends_quit_even_during_a_graceful_stop() -> None:
    sim = Sim(1)
    pid = sim.boot()[0]
    sim.do(sim.roster.stop(graceful=True, now=1.0))
    actions = sim.do(sim.roster.stop(graceful=False, now=2.0))
    assert signals(actions) == [(pid, signal.SIGQUIT)] and StopAccepting() not in actions
    assert kills(sim.at(2.0 + KILL_GRACE)) == [pid]
