"""Operations with real processes under real load: rolling reloads (also of broken code), scaling,
hung workers, max-requests and max-memory renewal, crashes, ``--reload`` and ``--pid``.

Each test starts its own cluster (one or two workers, ``--graceful-timeout 5``), drives it over
HTTP on 127.0.0.1 and polls for every condition with a deadline; the fixtures kill the whole
process group whatever happens. Measured values are printed (``pytest -s`` shows them). The last
tests are regression tests for bugs these tests found.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import time
from pathlib import Path

import pytest

from flask_cluster import ipc, wire
from flask_cluster.config import Config
from flask_cluster.contract import EXIT_BOOT_ERROR
from flask_cluster.master.process import Master
from flask_cluster.master.worker_handle import WorkerHandle
from tests.conftest import ROOT, StartCluster, alive, read_reply, wait_until
from tests.ops_apps.client import Load, cluster_in, ctl_ok, log_messages, status, wait_log_count, wait_settled

TEMPLATE = ROOT / "tests" / "ops_apps" / "changing.py"
OPS = "tests.ops_apps.ops"
DIED = re.compile(r"worker (?P<id>\d+) \(pid (?P<pid>\d+)\) died after (?P<lived>[\d.]+)s "
                  r"\(exit code 1\); respawning at once")


def measured(what: str, value: object) -> None:
    print(f"MEASURED {what}: {value}")


def changing_app(directory: Path, name: str) -> Path:
    """A copy of the template app as ``directory/name.py``, ready to be rewritten."""
    path = directory / f"{name}.py"
    shutil.copyfile(TEMPLATE, path)
    return path


def rewrite(path: Path, message: str) -> None:
    """A new ``MESSAGE`` in the app's source, as an editor would save it."""
    source = path.read_text()
    path.write_text(re.sub(r'^MESSAGE = ".*"$', f'MESSAGE = "{message}"', source, count=1,
                           flags=re.MULTILINE))


def path_env(directory: Path) -> dict[str, str]:
    """Workers import the app from ``directory``; no stale bytecode from the first import."""
    return {"PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]),
            "PYTHONDONTWRITEBYTECODE": "1"}


def assert_no_failed_request(load: Load) -> None:
    """Zero failed requests (a keep-alive request retried on a new connection after the server
    closed the idle connection under it is not a failure: see ``tests.ops_apps.client``)."""
    assert load.failures == [], f"{len(load.failures)} of {load.count() + len(load.failures)} " \
                                f"requests failed: {load.failures[:5]}"


def messages_by_pid(load: Load) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = {}
    for outcome in list(load.outcomes):
        seen.setdefault(outcome.body["pid"], set()).add(outcome.body["message"])
    return seen


# -- 1. rolling reloads ----------------------------------------------------------------------------


def test_two_hups_under_load_replace_every_worker_and_serve_new_code(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    app = changing_app(tmp_path, "ops_hup_app")
    cluster = start_cluster("ops_hup_app", workers=2, env=path_env(tmp_path))
    first = set(cluster.ready_pids.values())
    started = time.monotonic()
    with Load(cluster, "/message", new=2, keep=2) as load:
        load.wait_for_more(50)
        hup = time.monotonic()
        os.kill(cluster.master_pid, signal.SIGHUP)
        wait_log_count(cluster, "reload complete", 1)
        measured("first HUP reload seconds", round(time.monotonic() - hup, 2))
        second = set(cluster.wait_ready([0, 1], 10, not_pids=frozenset(first)).values())
        load.wait_for_more(50)

        rewrite(app, "message two")
        hup = time.monotonic()
        os.kill(cluster.master_pid, signal.SIGHUP)
        wait_log_count(cluster, "reload complete", 2)
        measured("second HUP reload seconds", round(time.monotonic() - hup, 2))
        third = set(cluster.wait_ready([0, 1], 10, not_pids=frozenset(first | second)).values())
        wait_until(lambda: all(messages_by_pid(load).get(pid) for pid in third), 15,
                   message="both new workers to serve the load")
        # Keep the load on for about ten seconds in all.
        time.sleep(max(0.0, started + 10.0 - time.monotonic()))
    measured("HUP test requests / keep-alive retries", (load.count(), len(load.retries)))

    assert not first & second and not second & third, "every reload replaces every worker"
    wait_until(lambda: not any(alive(pid) for pid in first | second), 15,
               message="the replaced workers to exit")
    seen = messages_by_pid(load)
    assert all(seen[pid] == {"message one"} for pid in first | second if pid in seen)
    assert all(seen[pid] == {"message two"} for pid in third), seen
    assert cluster.get_json("/message")["message"] == "message two"
    assert {o.kind for o in load.outcomes} == {"new", "keep"}
    assert_no_failed_request(load)


# -- 2. a reload of code that does not load --------------------------------------------------------


def test_reload_with_a_syntax_error_keeps_the_old_workers_serving(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    app = changing_app(tmp_path, "ops_broken_app")
    sock = tmp_path / "ctl"
    cluster = start_cluster("ops_broken_app", "--control-socket", str(sock), workers=2,
                            env=path_env(tmp_path))
    original = dict(cluster.ready_pids)
    good_source = app.read_text()
    with Load(cluster, "/message", new=2, keep=1) as load:
        load.wait_for_more(30)
        app.write_text(good_source + "\ndef broken(:\n    pass\n")
        assert "reload started" in ctl_ok("reload", control_socket=sock)
        failed = wait_until(lambda: status(sock)["master"]["last_error"], 30, interval=0.2,
                            message="status to report the failed reload")
        load.wait_for_more(30)
        after = status(sock)
        table = ctl_ok("status", control_socket=sock)

        # The fixed code reloads.
        app.write_text(good_source)
        rewrite(app, "message fixed")
        os.kill(cluster.master_pid, signal.SIGHUP)
        wait_log_count(cluster, "reload complete", 1)
        fixed = cluster.wait_ready([0, 1], 15, not_pids=frozenset(original.values()))
        wait_until(lambda: set(fixed.values()) <= set(load.served_by()), 15,
                   message="the fixed code to serve")
    measured("broken reload last_error", failed.splitlines()[-1])

    assert failed.startswith("worker 0 failed to boot: ") and "SyntaxError" in failed, failed
    assert {w["worker_id"]: w["pid"] for w in after["workers"]} == original
    assert all(w["state"] == "ready" for w in after["workers"])
    assert after["master"]["reloading"] is False
    assert "last error: worker" in table and "SyntaxError" in table
    log = cluster.log()
    assert "SyntaxError" in log and "the running workers keep serving" in log
    served_by_old = {o.body["pid"] for o in load.outcomes if o.body["message"] == "message one"}
    assert served_by_old == set(original.values())
    assert all(o.body["message"] == "message fixed" for o in load.outcomes
               if o.body["pid"] in fixed.values())
    assert_no_failed_request(load)


# -- 3. scaling ------------------------------------------------------------------------------------


def test_scale_up_and_down_under_load(start_cluster: StartCluster, tmp_path: Path) -> None:
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--control-socket", str(sock), workers=2)
    with Load(cluster, "/worker", new=2, keep=2) as load:
        load.wait_for_more(30)
        assert "scaling to 4 workers" in ctl_ok("scale", "4", control_socket=sock)
        four = wait_settled(sock, 4)
        four_pids = {w["pid"] for w in four["workers"]}
        wait_until(lambda: four_pids <= set(load.served_by()), 20,
                   message="all four workers to serve")

        assert "scaling to 1 workers" in ctl_ok("scale", "1", control_socket=sock)
        one = wait_settled(sock, 1)
        gone = four_pids - {one["workers"][0]["pid"]}
        wait_until(lambda: not any(alive(pid) for pid in gone), 15,
                   message="the retired workers to exit")
        load.wait_for_more(30)

        os.kill(cluster.master_pid, signal.SIGTTIN)
        two = wait_settled(sock, 2)
        os.kill(cluster.master_pid, signal.SIGTTOU)
        back = wait_settled(sock, 1)
        load.wait_for_more(30)
    measured("scale test requests / keep-alive retries", (load.count(), len(load.retries)))

    assert len(four_pids) == 4
    assert one["workers"][0]["pid"] in four_pids, "scaling down keeps worker 0"
    assert two["workers"][0]["pid"] == one["workers"][0]["pid"]
    assert back["workers"] and back["workers"][0]["pid"] == one["workers"][0]["pid"]
    log = cluster.log()
    for change in ("2 to 4", "4 to 1", "1 to 2", "2 to 1"):
        assert f"scaling from {change} workers" in log
    assert_no_failed_request(load)


# -- 4. hung workers -------------------------------------------------------------------------------

TIMEOUT = 3.0


@pytest.mark.parametrize("threads", [1, 4])
def test_hung_worker_is_replaced_while_the_other_keeps_serving(
        start_cluster: StartCluster, threads: int) -> None:
    cluster = start_cluster(OPS, "--timeout", str(TIMEOUT), "--threads", str(threads), workers=2)
    spin_conn = cluster.connection(timeout=30)
    # With one thread the hung worker takes no more connections: those passed to it before
    # it was passed over wait until it is killed, then the master passes them on.
    with contextlib.closing(spin_conn), \
            Load(cluster, "/worker", new=2, keep=1 if threads > 1 else 0, timeout=20.0) as load:
        load.wait_for_more(20)
        spin_conn.request("GET", "/spin")
        spin = wait_until(lambda: re.search(r"spin-start worker (\d+) pid (\d+)", cluster.log()),
                          10, message="the request that never returns")
        hung_at = time.monotonic()
        hung_id, hung_pid = int(spin[1]), int(spin[2])
        other_pid = cluster.ready_pids[1 - hung_id]
        served_before = load.served_by().get(other_pid, 0)
        replacement = cluster.wait_ready([hung_id], TIMEOUT + 15,
                                         not_pids=frozenset([hung_pid]))[hung_id]
        replaced_after = time.monotonic() - hung_at
        served_meanwhile = load.served_by().get(other_pid, 0) - served_before
        wait_until(lambda: not alive(hung_pid), 10, message="the hung worker to be killed")
        wait_until(lambda: replacement in load.served_by(), 10,
                   message="the replacement to serve")
    measured(f"threads={threads} hung worker replaced after (s)", round(replaced_after, 2))
    measured(f"threads={threads} requests served by the other worker meanwhile", served_meanwhile)
    measured(f"threads={threads} failed requests during the hang", len(load.failures))

    assert replaced_after < TIMEOUT + 6, f"replaced after {replaced_after:.1f}s"
    assert served_meanwhile >= 5
    assert f"worker {hung_id} (pid {hung_pid}) silent for more than 3s: replacing it" \
        in cluster.log()
    if threads > 1:
        # The stuck thread's worker served its other requests until it was replaced.
        assert "a request has been running for" in cluster.log()
        assert served_before and load.served_by().get(hung_pid, 0) > 0
        assert_no_failed_request(load)
    else:
        # Connections passed to the hung worker but not taken are passed on once its loop stops
        # answering, and those it took in the same packet as the request that hangs are handed
        # back by its watchdog: nothing but the hung request is lost (before the take-back
        # about 4 were lost in every run, before the watchdog 1 in 24 runs).
        assert_no_failed_request(load)


def test_stuck_request_thread_is_noticed_one_timeout_after_it_started(
        start_cluster: StartCluster) -> None:
    """Regression: the worker stopped vouching only once the request passed --timeout, and the
    master then waited another --timeout (replaced after twice --timeout)."""
    cluster = start_cluster(OPS, "--timeout", str(TIMEOUT), "--threads", "4", workers=1)
    spin_conn = cluster.connection(timeout=30)
    try:
        spin_conn.request("GET", "/spin")
        wait_until(lambda: "spin-start" in cluster.log(), 10, message="the stuck request")
        stuck_at = time.monotonic()
        wait_log_count(cluster, "silent for more than", 1, timeout=TIMEOUT * 2 + 10)
        noticed = time.monotonic() - stuck_at
    finally:
        spin_conn.close()
    measured("threads=4 stuck request noticed after (s)", round(noticed, 2))
    # One heartbeat tick and one master check of slack, as a worker whose loop is stuck gets.
    assert noticed < TIMEOUT + 2.0


# -- 5. max-requests -------------------------------------------------------------------------------


def test_max_requests_with_jitter_recycles_workers_at_different_times(
        start_cluster: StartCluster) -> None:
    cluster = start_cluster(OPS, "--max-requests", "100", "--max-requests-jitter", "20",
                            workers=2)
    retire = re.compile(r"worker (\d+) \(pid (\d+)\) served its --max-requests: replacing it")
    started = time.monotonic()
    with Load(cluster, "/worker", new=2, keep=2) as load:
        wait_until(lambda: len(retire.findall(cluster.log())) >= 6, 60, interval=0.1,
                   message=lambda: f"six recycles:\n{cluster.log()}")
        time.sleep(max(0.0, started + 10.0 - time.monotonic()))
    measured("max-requests test requests / keep-alive retries", (load.count(), len(load.retries)))

    retired = [(stamp, int(m[1]), int(m[2])) for stamp, message in log_messages(cluster.log())
               if (m := retire.fullmatch(message))]
    served = load.served_by()
    counts = {pid: served.get(pid, 0) for _, _, pid in retired}
    measured("requests served by each recycled worker", counts)
    assert all(count >= 100 for count in counts.values()), counts
    assert len(set(counts.values())) > 1, "the workers do not all recycle at one count"
    # Not in lockstep: some recycle of worker 1 is well apart from every recycle of worker 0.
    zero = [stamp for stamp, wid, _ in retired if wid == 0]
    apart = [min(abs(stamp - other) for other in zero) for stamp, wid, _ in retired if wid == 1]
    measured("recycles of worker 1 apart from worker 0's (s)", [round(a, 3) for a in apart])
    assert zero and apart and max(apart) > 0.05
    assert_no_failed_request(load)


# -- 6. crashes caused by requests ---------------------------------------------------------------


def test_worker_crashing_on_requests_is_respawned_at_once_and_the_other_keeps_serving(
        start_cluster: StartCluster) -> None:
    """A worker that was ready and served, then crashed (a client may have caused it), is
    respawned at once: no backoff, no crash-loop exit, however often it happens."""
    cluster = start_cluster(OPS, workers=2)
    other = cluster.ready_pids[1]
    with Load(cluster, "/crash", new=2, keep=0, timeout=5.0, pause=0.02) as crasher, \
            Load(cluster, "/worker", new=1, keep=0, timeout=5.0, pause=0.02) as serving:
        wait_log_count(cluster, "died after", 10, timeout=60)
        wait_until(lambda: serving.count() >= 50, 30, message="the other worker to serve more")
    log = cluster.log()
    crashes = [m for _, message in log_messages(log) if (m := DIED.search(message))]
    measured("crashes / /worker failures, answered",
             (len(crashes), (len(serving.failures), serving.count())))

    assert cluster.proc.poll() is None
    assert len(crashes) >= 10 and all(m["id"] == "0" for m in crashes), "only worker 0 crashes"
    assert "respawning in" not in log and "keep dying" not in log
    pids = [m["pid"] for m in crashes]
    assert len(pids) == len(set(pids)), "one log line per crash"
    # Every crash was followed by a respawn that became ready (the last may still boot).
    assert len(re.findall(r"worker 0 \(pid \d+\) ready", log)) >= len(crashes)
    assert {o.body["pid"] for o in crasher.outcomes} == {other}
    assert len([o for o in serving.outcomes if o.body["pid"] == other]) >= 25
    assert cluster.get_json("/worker")["pid"] in (other, *cluster.worker_pids())


# -- 8. max-memory ---------------------------------------------------------------------------------


def test_worker_above_max_memory_is_replaced_gracefully(start_cluster: StartCluster,
                                                         tmp_path: Path) -> None:
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--max-memory", "60", "--control-socket", str(sock), workers=2)
    baseline = max(w["rss_mib"] for w in status(sock)["workers"])
    assert baseline < 50, f"a fresh worker already uses {baseline} MiB"
    with Load(cluster, "/worker", new=1, keep=1) as load:
        load.wait_for_more(20)
        hog = cluster.get_json("/hog/80")
        hogged = time.monotonic()
        hog_id, hog_pid = hog["worker_id"], hog["pid"]
        wait_log_count(cluster, f"(pid {hog_pid}) uses", 1, timeout=20)
        noticed = time.monotonic() - hogged
        replacement = cluster.wait_ready([hog_id], 20, not_pids=frozenset([hog_pid]))[hog_id]
        replaced = time.monotonic() - hogged
        wait_until(lambda: not alive(hog_pid), 15, message="the hog to exit")
        # Gone is not yet reaped: the master logs the exit a moment later.
        wait_log_count(cluster, f"worker {hog_id} (pid {hog_pid}) exited (exit code 0)", 1, 10)
        wait_until(lambda: replacement in load.served_by(), 10, message="the replacement to serve")
    measured("max-memory noticed / replacement ready after (s)",
             (round(noticed, 2), round(replaced, 2)))

    assert noticed < 5.0
    log = cluster.log()
    assert f"worker {hog_id} (pid {hog_pid}) uses" in log and "above --max-memory 60" in log
    assert f"worker {hog_id} (pid {hog_pid}) exited (exit code 0)" in log  # gracefully
    state = status(sock)
    assert all(w["rss_mib"] < 60 for w in state["workers"])
    assert next(w for w in state["workers"] if w["worker_id"] == hog_id)["pid"] == replacement
    assert_no_failed_request(load)


# -- 9. --reload -----------------------------------------------------------------------------------


def test_reload_option_serves_changed_source(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    app = changing_app(project, "ops_watch_app")
    with cluster_in(project, tmp_path / "cluster.log", "ops_watch_app", "--workers", "2",
                    "--reload", env=path_env(project)) as cluster:
        first = set(cluster.ready_pids.values())
        with Load(cluster, "/message", new=1, keep=1) as load:
            load.wait_for_more(20)
            changed = time.monotonic()
            rewrite(app, "message edited")
            wait_until(lambda: any(o.body["message"] == "message edited"
                                   for o in list(load.outcomes)), 30,
                       message=lambda: f"the edited text to be served:\n{cluster.log()}")
            served = time.monotonic() - changed
            wait_log_count(cluster, "reload complete", 1)
            new = cluster.wait_ready([0, 1], 10, not_pids=frozenset(first))
        measured("--reload: edited text served after (s)", round(served, 2))

        assert "source changed: reloading" in cluster.log()
        assert cluster.get_json("/message")["message"] == "message edited"
        assert not set(new.values()) & first
        assert_no_failed_request(load)


# -- 10. --pid -------------------------------------------------------------------------------------


def test_pid_file_names_the_control_socket_and_is_removed_at_exit(
        start_cluster: StartCluster, tmp_path: Path) -> None:
    pid_file = tmp_path / "ops.pid"
    cluster = start_cluster(OPS, "--pid", str(pid_file), workers=2)
    control = Path(f"{pid_file}.ctl")
    assert pid_file.read_text().strip() == str(cluster.master_pid)
    assert stat.S_ISSOCK(control.stat().st_mode)
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    state = json.loads(ctl_ok("--pid", str(pid_file), "status", "--json"))
    assert state["master"]["pid"] == cluster.master_pid
    assert "stopping" in ctl_ok("--pid", str(pid_file), "stop")
    assert cluster.wait_exit(20) == 0
    assert not pid_file.exists()
    assert not control.exists()


# -- regressions found while writing these tests -------------------------------------------------


def test_connection_handed_over_before_a_reload_is_answered(start_cluster: StartCluster) -> None:
    """Regression: a worker told to stop closed the connections the master had handed it that
    had not sent their first request yet, resetting requests already on the wire. Retired by a
    reload, it now hands such a connection to its successor, kept alive."""
    cluster = start_cluster(OPS, "--keep-alive", "10", workers=1)
    old = cluster.ready_pids[0]
    early = cluster.connection(timeout=10)
    try:
        early.connect()  # accepted and handed to worker 0; the request follows a little later
        # Accepted after `early` and answered: `early` reached the worker too (hand-off is FIFO).
        assert cluster.get_json("/worker")["pid"] == old
        os.kill(cluster.master_pid, signal.SIGHUP)
        wait_log_count(cluster, "reload complete", 1)
        # Give the old worker time to act on its stop (it used to close `early` and exit at once).
        deadline = time.monotonic() + 3.0
        while alive(old) and time.monotonic() < deadline:
            time.sleep(0.02)
        reply = read_reply(early, "GET", "/worker")
    finally:
        early.close()
    assert reply.status == 200
    assert reply.json()["pid"] == cluster.wait_ready([0], 10, not_pids=frozenset([old]))[0]
    assert reply.headers.get("connection", "keep-alive") != "close"


def test_request_in_flight_finishes_when_the_master_is_killed(start_cluster: StartCluster,
                                                              tmp_path: Path) -> None:
    """Regression: a worker that found the master gone drained its hand-off channel, which found
    the master gone again, until RecursionError; requests in flight were lost."""
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--threads", "2", "--control-socket", str(sock), workers=1)
    conn = cluster.connection(timeout=15)
    try:
        conn.request("GET", "/sleep/3")
        wait_until(lambda: status(sock)["workers"][0]["in_flight"], 10,
                   message="the slow request in flight")
        os.kill(cluster.master_pid, signal.SIGKILL)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    assert "RecursionError" not in cluster.log()


def test_boot_failure_reason_is_kept_when_the_exit_is_seen_first() -> None:
    """Regression: a worker that failed to boot and exited between the master's select and its
    waitpid lost its reason ("see the worker's traceback above" in status).

    In-process, no fork: the order of events of that race, made deterministic."""
    master = Master(Config(workers=1), lambda: None, "ops", lambda spec: 0)
    never = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has these pids
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        running = WorkerHandle(0, 0, never, ipc.MessageChannel(pairs[0][0]), None,
                               master.scoreboard)
        master.roster.add(0, never, 0.0)
        master.roster.ready(never, 1.0)
        successor = WorkerHandle(0, 1, never + 1, ipc.MessageChannel(pairs[1][0]), None,
                                 master.scoreboard)
        master.roster.add(0, never + 1, 2.0)
        master.workers = {running.pid: running}  # the successor is being reaped
        # The successor's last words reach its channel, then it exits with the boot-error code.
        ipc.MessageChannel(pairs[1][1]).send_now(
            wire.encode(wire.BootFailed("SyntaxError: invalid syntax (app.py, line 3)")))
        pairs[1][1].close()
        master._exited(successor, EXIT_BOOT_ERROR << 8)
        assert master.roster.last_error == \
            "worker 0 failed to boot: SyntaxError: invalid syntax (app.py, line 3)"
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        master.selector.close()
        master.signals.close()
