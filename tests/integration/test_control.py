"""``flask cluster-ctl`` against a real cluster: where the control socket is, who may use it,
what ``status`` shows, ``broadcast`` and ``stop``, and the errors a user sees."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_cluster.master.control import ControlError, request
from tests.conftest import ROOT, STARTUP, StartCluster, alive, wait_until
from tests.ops_apps.client import cluster_in, ctl, ctl_ok, status

OPS = "tests.ops_apps.ops"
NOBODY = 65534
WORKER_FIELDS = {"worker_id", "pid", "state", "uptime", "requests", "in_flight", "untaken",
                 "rss_mib", "restarts", "req_s", "p50_ms", "p99_ms"}
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp with a short path (a Unix socket path has at most 107 bytes),
    that other users may enter (0755)."""
    path = Path(tempfile.mkdtemp(prefix="fc-ops-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def as_other_user_do(action: Callable[[], str]) -> str:
    """``action()`` in a child process running as ``nobody``; what it returned (or raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        text = "error: nothing happened"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            text = action()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
            text = f"error: {exc!r}"
        finally:
            os.write(write_end, text.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def as_other_user(path: Path, command: dict[str, object]) -> str:
    """cluster-ctl's request as ``nobody``: ``"ok ..."`` with the reply, or ``"refused ..."``
    with the message cluster-ctl prints."""

    def send() -> str:
        try:
            return "ok " + json.dumps(request(str(path), command, timeout=5.0))
        except ControlError as exc:
            return f"refused {exc}"

    return as_other_user_do(send)


# -- status, broadcast, stop -----------------------------------------------------------------------


def test_status_broadcast_and_stop(start_cluster: StartCluster, tmp_path: Path) -> None:
    sock = tmp_path / "ctl"
    cluster = start_cluster(OPS, "--control-socket", str(sock), workers=2)
    for _ in range(6):
        cluster.get_json("/worker")

    def after_first_heartbeat() -> dict[str, Any] | None:
        # Workers publish their memory on each heartbeat tick (about a second).
        state = status(sock)
        return state if all(w["rss_mib"] for w in state["workers"]) else None

    state = wait_until(after_first_heartbeat, 10, interval=0.2,
                       message="the workers' first heartbeat")
    master = state["master"]
    assert master["pid"] == cluster.master_pid
    assert master["address"] == cluster.address
    assert master["balance"] == "round-robin"
    assert master["workers"] == 2
    assert master["last_error"] is None
    assert master["holding"] == 0  # a worker was free for every connection
    assert master["workers_accept"] is False
    assert [w["worker_id"] for w in state["workers"]] == [0, 1]
    for worker in state["workers"]:
        assert set(worker) == WORKER_FIELDS
        assert worker["pid"] == cluster.ready_pids[worker["worker_id"]]
        assert worker["state"] == "ready"
        assert worker["uptime"] >= 0 and worker["restarts"] == 0 and worker["in_flight"] == 0
        assert worker["untaken"] == 0  # idle workers took every connection passed to them
        assert 5 < worker["rss_mib"] < 500
    assert sum(w["requests"] for w in state["workers"]) == 6

    table = ctl_ok("status", control_socket=sock).splitlines()
    assert table[0].startswith(f"master {cluster.master_pid}  {OPS} on {cluster.address}")
    assert table[1].split() == ["worker_id", "pid", "state", "uptime", "requests", "in_flight",
                                "untaken", "rss_mib", "restarts"]
    rows = [line.split() for line in table[2:]]
    assert [(row[0], row[1], row[2]) for row in rows] == \
        [(str(wid), str(pid), "ready") for wid, pid in sorted(cluster.ready_pids.items())]

    note = {"n": 1, "text": "héllo"}
    out = ctl_ok("broadcast", "note", "--data", json.dumps(note), control_socket=sock)
    assert out.strip() == "delivered to 2 workers"
    seen: dict[int, list[object]] = {}

    def every_worker_noted() -> bool:
        reply = cluster.get_json("/notes")
        seen[reply["worker_id"]] = reply["notes"]
        return len(seen) == 2 and all(notes == [note] for notes in seen.values())

    wait_until(every_worker_noted, 10, message=lambda: f"the note in both workers, saw {seen}")

    bad = ctl("broadcast", "note", "--data", "{not json", control_socket=sock)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    zero = ctl("scale", "0", control_socket=sock)
    assert zero.returncode == 2 and "0 is not in the range x>=1" in zero.stderr
    assert status(sock)["master"]["workers"] == 2, "refused commands change nothing"

    assert ctl_ok("stop", control_socket=sock).strip() == "stopping"
    assert cluster.wait_exit(20) == 0
    assert not sock.exists(), "the master removes its control socket"
    after = ctl("status", control_socket=sock)
    assert after.returncode == 1
    assert after.stderr.startswith(f"Error: no cluster is listening at {sock}")


# -- where the socket is ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["xdg", "tmp", "uds"])
def test_default_control_socket_path(start_cluster: StartCluster, short_dir: Path, tmp_path: Path,
                                     rule: str) -> None:
    """The rule cluster-run and cluster-ctl share: ``$XDG_RUNTIME_DIR/flask-cluster/``, else
    ``/tmp/flask-cluster-<uid>/``, ``<app>-<host>-<port>.ctl``; with ``--uds U``, ``U.ctl``."""
    unset: tuple[str, ...] = ("XDG_RUNTIME_DIR",) if rule == "tmp" else ()
    with contextlib.ExitStack() as stack:
        if rule == "tmp":
            cluster = stack.enter_context(cluster_in(ROOT, tmp_path / "cluster.log", OPS,
                                                     "--workers", "1", unset=unset))
        else:
            options = ["--uds", str(short_dir / "app.sock")] if rule == "uds" else []
            cluster = start_cluster(OPS, *options, workers=1,
                                    env={"XDG_RUNTIME_DIR": str(short_dir)})
        name = f"{OPS}-127.0.0.1-{cluster.port}.ctl"
        if rule == "xdg":
            expected, where = short_dir / "flask-cluster" / name, ["--port", str(cluster.port)]
        elif rule == "tmp":
            expected = Path(tempfile.gettempdir(), f"flask-cluster-{os.getuid()}", name)
            where = ["--host", "127.0.0.1", "--port", str(cluster.port)]
        else:
            expected, where = short_dir / "app.sock.ctl", ["--uds", str(short_dir / "app.sock")]

        assert stat.S_ISSOCK(expected.lstat().st_mode)
        assert mode(expected) == 0o600
        if rule != "uds":  # the directory the product chose is private; a --uds one is the user's
            assert mode(expected.parent) == 0o700
        env = {"XDG_RUNTIME_DIR": str(short_dir)}
        state = json.loads(ctl_ok(*where, "status", "--json", app=OPS, env=env, unset=unset))
        assert state["master"]["pid"] == cluster.master_pid
        os.kill(cluster.master_pid, signal.SIGTERM)
        assert cluster.wait_exit(20) == 0
        assert not expected.exists()


# -- who may use it --------------------------------------------------------------------------------


@as_root
def test_another_user_is_refused(start_cluster: StartCluster, short_dir: Path) -> None:
    cluster = start_cluster(OPS, workers=1, env={"XDG_RUNTIME_DIR": str(short_dir)})
    sock = short_dir / "flask-cluster" / f"{OPS}-127.0.0.1-{cluster.port}.ctl"
    assert (mode(sock.parent), mode(sock)) == (0o700, 0o600)

    # The private directory keeps others out ...
    assert as_other_user(sock, {"command": "status"}).startswith(
        f"refused cannot talk to the cluster at {sock}: Permission denied")
    # ... so does the socket's own mode ...
    sock.parent.chmod(0o755)
    assert as_other_user(sock, {"command": "status"}).startswith(
        f"refused cannot talk to the cluster at {sock}: Permission denied")
    # ... and the master checks the peer's uid itself.
    sock.chmod(0o666)
    assert as_other_user(sock, {"command": "status"}) == "refused permission denied"
    assert as_other_user(sock, {"command": "stop"}) == "refused permission denied"

    # The owner still may; the master answers in order, so an obeyed stop would be logged by now.
    assert status(sock)["master"]["pid"] == cluster.master_pid
    assert alive(cluster.master_pid) and "graceful stop" not in cluster.log()
    assert cluster.get_json("/worker")["worker_id"] == 0


# -- errors ----------------------------------------------------------------------------------------


def test_cluster_ctl_without_a_cluster(tmp_path: Path, short_dir: Path) -> None:
    missing = tmp_path / "nothing.ctl"
    done = ctl("status", control_socket=missing)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"Error: no cluster is listening at {missing} (is it running? same --pid, --uds, "
        "--host/--port or --control-socket as cluster-run?)")

    # A socket file left behind by a master that was killed: nobody listens on it.
    stale = tmp_path / "stale.ctl"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(stale))
    done = ctl("reload", control_socket=stale)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: cannot talk to the cluster at {stale}: Connection refused"

    # The default path of an address where no cluster runs.
    done = ctl("--port", "1", "stop", app=OPS, env={"XDG_RUNTIME_DIR": str(short_dir)})
    assert done.returncode == 1
    assert "Error: no cluster is listening at " \
           f"{short_dir / 'flask-cluster' / (OPS + '-127.0.0.1-1.ctl')}" in done.stderr


def slow_client(path: Path) -> str:
    """cluster-ctl's exchange from a client that is descheduled for a moment after connecting
    (a loaded machine): what it reads back, or why it could not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        select.select([sock], [], [], 1.0)  # the pause; returns early if the master answers
        try:
            sock.sendall(b'{"command": "status"}\n')
        except OSError as exc:
            return f"send failed: {exc.strerror}"
        return sock.recv(65536).decode()


@as_root
def test_refusal_reaches_a_slow_client_of_another_user(start_cluster: StartCluster,
                                                       short_dir: Path) -> None:
    """Regression: the master answered another user before reading the request and hung up, so a
    client still sending saw "Broken pipe" instead of "permission denied"."""
    sock = short_dir / "ctl"
    start_cluster(OPS, "--control-socket", str(sock), workers=1)
    sock.chmod(0o666)
    answer = as_other_user_do(lambda: slow_client(sock))
    assert json.loads(answer) == {"ok": False, "error": "permission denied"}, answer


@as_root
def test_default_directory_made_by_another_user_is_not_used(start_cluster: StartCluster,
                                                            short_dir: Path) -> None:
    """Regression: the default control socket directory was used even when another user had
    made it (who could then replace the socket in it)."""
    squatted = short_dir / "flask-cluster"  # as /tmp/flask-cluster-<uid> can be, by anyone
    squatted.mkdir()
    os.chown(squatted, NOBODY, NOBODY)
    squatted.chmod(0o777)
    cluster = start_cluster(OPS, workers=1, wait=False, env={"XDG_RUNTIME_DIR": str(short_dir)})
    wait_until(lambda: cluster.proc.poll() is not None or STARTUP.search(cluster.log()), 30,
               message=lambda: f"the cluster to start or give up:\n{cluster.log()}")
    assert list(squatted.iterdir()) == [], "no control socket where another user can replace it"
    assert cluster.wait_exit(10) == 1
    assert f"Error: {squatted} is not a directory of yours" in cluster.log()


def test_control_socket_that_cannot_be_made_is_a_clear_error(start_cluster: StartCluster,
                                                             short_dir: Path) -> None:
    """Regression: a control socket that could not be made (path too long) ended cluster-run
    with a traceback and left the pid file behind."""
    pid_file = short_dir / ("p" * 110 + ".pid")  # its .ctl is longer than a socket path may be
    cluster = start_cluster(OPS, "--pid", str(pid_file), workers=1, wait=False)
    assert cluster.wait_exit(30) == 1
    log = cluster.log()
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == (
        f"Error: cannot create the control socket {pid_file}.ctl: AF_UNIX path too long")
    assert not pid_file.exists()


def test_a_pid_file_that_cannot_be_written_is_one_line_and_leaves_nothing(
        start_cluster: StartCluster, short_dir: Path) -> None:
    """Regression: an unwritable --pid gave a 33-line traceback and left the control socket."""
    control = short_dir / "c.sock"
    pid_file = "/proc/no-such-dir/cluster.pid"  # /proc takes no new files, even from root
    cluster = start_cluster(OPS, "--pid", pid_file, "--control-socket", str(control),
                            workers=1, wait=False)
    assert cluster.wait_exit(30) == 1
    log = cluster.log()
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == (
        f"Error: cannot write the pid file {pid_file}: No such file or directory")
    assert not control.exists()


def test_a_second_cluster_with_the_same_pid_file_does_not_take_over_the_first(
        start_cluster: StartCluster, short_dir: Path) -> None:
    pid_file = short_dir / "app.pid"
    first = start_cluster(OPS, "--pid", str(pid_file), workers=1)

    second = start_cluster(OPS, "--pid", str(pid_file), workers=1, wait=False)

    assert second.wait_exit(30) == 1
    assert "another server is listening there" in second.log().strip().splitlines()[-1]
    assert pid_file.read_text().strip() == str(first.master_pid)
    reply = request(f"{pid_file}.ctl", {"command": "status"})
    assert reply["master"]["pid"] == first.master_pid


def test_an_address_in_use_is_tried_again_until_it_is_free(start_cluster: StartCluster) -> None:
    """As after a master kill, when an orphaned worker still holds the port for a moment."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        cluster = start_cluster(OPS, "--port", str(port), workers=1, wait=False)
        wait_until(lambda: "is in use; trying again" in cluster.log(), timeout=15,
                   message=lambda: f"the retry line in:\n{cluster.log()}")
    finally:
        holder.close()
    cluster.wait_started()
    assert cluster.port == port
    assert cluster.request("/").status in (200, 404)


def test_cluster_ctl_finds_the_one_cluster_of_its_app_without_options(
        start_cluster: StartCluster, short_dir: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(short_dir)}  # a registry of this test's own
    cluster = start_cluster(OPS, workers=1, env=env)  # on a port picked at random

    shown = json.loads(ctl_ok("status", "--json", app=OPS, env=env))

    assert shown["master"]["pid"] == cluster.master_pid
    assert shown["master"]["address"] == cluster.address


def test_cluster_ctl_lists_the_clusters_of_its_app_when_there_are_several(
        start_cluster: StartCluster, short_dir: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(short_dir)}
    first = start_cluster(OPS, workers=1, env=env)
    second = start_cluster(OPS, workers=1, env=env)

    done = ctl("status", app=OPS, env=env)

    assert done.returncode == 2, done.stdout + done.stderr  # a usage error: choose one
    assert "2 clusters of tests.ops_apps.ops are running" in done.stderr
    for cluster in (first, second):
        assert f"{cluster.address}  master pid {cluster.master_pid}" in done.stderr
    second.stop()
    assert json.loads(ctl_ok("status", "--json", app=OPS, env=env))["master"]["pid"] == \
        first.master_pid  # the registry forgets a cluster that stopped
