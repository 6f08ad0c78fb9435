"""Fixtures for the integration tests: a real ``flask cluster-run`` in its own process group.

:class:`ClusterProcess` plays the part of werkzeug's ``DevServerClient``: it starts the command
as a separate process (its own session, so its own process group), waits for the startup line
and for every worker to report ready, talks HTTP to it over loopback or a Unix socket, and on
exit always stops it: SIGTERM to the master, a bounded wait, then SIGKILL to the whole group.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP = re.compile(
    r"serving (?P<app>\S+) on (?P<address>\S+) with (?P<workers>\d+) workers? "
    r"\(balance (?P<balance>[\w-]+), threads (?P<threads>\d+)\), master pid (?P<pid>\d+)")
READY = re.compile(r"worker (?P<id>\d+) \(pid (?P<pid>\d+)\) ready")
START_TIMEOUT = 30.0  # a loaded 2-core machine imports Flask in every worker at once
T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout: float, interval: float = 0.02,
               message: str | Callable[[], str] = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


# -- processes -----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of ``pid`` from /proc, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited: it only waits to be reaped)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(pid)
    return members


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    found = []
    for child in _all_pids():
        stat = _stat(child)
        if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
            found.append(child)
    return sorted(found)


def fd_targets(pid: int) -> list[str]:
    """Where ``pid``'s open file descriptors lead (a path, or ``socket:[INODE]``); raises
    OSError once ``pid`` is gone."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return targets


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- HTTP ----------------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (``--uds``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def read_reply(conn: http.client.HTTPConnection, method: str, path: str, *,
               body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """One request on ``conn`` (which stays open if the server keeps it alive)."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def read_until_close(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server sends, and how it ended: ``"close"`` (recv returned b""),
    ``"reset"`` or ``"timeout"`` (the server kept the connection open)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        except TimeoutError:
            return data, "timeout"
        if not chunk:
            return data, "close"
        data += chunk



# -- the cluster ---------------------------------------------------------------------------------


@dataclass
class ClusterProcess:
    """A running ``flask cluster-run`` and the ways a test talks to it."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    graceful_timeout: float
    address: str = ""
    master_pid: int = 0
    workers: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    uds: str | None = None
    ready_pids: dict[int, int] = field(default_factory=dict)  # worker id -> pid, newest

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the master leads its own group

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- start ----------------------------------------------------------------------------

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the startup line, then for every worker's ``ready``."""

        def started() -> re.Match[str] | None:
            self._check_running()
            return STARTUP.search(self.log())

        match = wait_until(started, timeout, message=lambda: f"the startup line in:\n{self.log()}")
        self.address = match["address"]
        self.master_pid = int(match["pid"])
        self.workers = int(match["workers"])
        assert self.master_pid == self.proc.pid, "the master is the process we started"
        if self.address.startswith("unix:"):
            self.uds = self.address[len("unix:"):]
        else:
            url = re.fullmatch(r"http://(?P<host>[^:/]+):(?P<port>\d+)", self.address)
            assert url is not None, self.address
            self.host, self.port = url["host"], int(url["port"])
            assert self.host == "127.0.0.1"
        self.wait_ready(range(self.workers), timeout)

    def wait_ready(self, worker_ids: Any, timeout: float = START_TIMEOUT,
                   not_pids: frozenset[int] = frozenset()) -> dict[int, int]:
        """Wait until each of ``worker_ids`` logged ``ready`` with a pid not in ``not_pids``."""
        wanted = set(worker_ids)

        def ready() -> bool:
            self._check_running()
            self.ready_pids = {int(m["id"]): int(m["pid"]) for m in READY.finditer(self.log())}
            return all(self.ready_pids.get(wid, 0) not in (0, *not_pids) for wid in wanted)

        wait_until(ready, timeout, message=lambda: f"workers {sorted(wanted)} ready in:\n"
                                                   f"{self.log()}")
        return {wid: self.ready_pids[wid] for wid in wanted}

    def _check_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"cluster-run exited with {self.proc.returncode}:\n{self.log()}")

    # -- HTTP -----------------------------------------------------------------------------

    def connection(self, timeout: float = 15.0) -> http.client.HTTPConnection:
        """A new client connection (the caller closes it), over TCP or the Unix socket."""
        if self.uds is not None:
            return UnixHTTPConnection(self.uds, timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, path: str, method: str = "GET", *, body: bytes | None = None,
                timeout: float = 15.0) -> Reply:
        """One request on a new TCP connection (``Connection: close``)."""
        conn = self.connection(timeout)
        try:
            return read_reply(conn, method, path, body=body, headers={"Connection": "close"})
        finally:
            conn.close()

    def get_json(self, path: str, method: str = "GET", expect: int = 200,
                 timeout: float = 15.0) -> Any:
        reply = self.request(path, method, timeout=timeout)
        assert reply.status == expect, f"{method} {path}: {reply.status} {reply.text}"
        return reply.json()

    # -- processes ------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The master's live children, which are its workers."""
        return children(self.master_pid)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cluster-run did not exit within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """Always leaves nothing behind: SIGTERM, a bounded wait, then SIGKILL to the group."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(self.graceful_timeout + 5.0)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10.0)
            deadline = time.monotonic() + 10.0
            while group_members(self.pgid) and time.monotonic() < deadline:
                time.sleep(0.02)


def cluster_command(app: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", app, "cluster-run", *args]


_runtime_dir: str | None = None


def runtime_dir() -> str:
    """A private ``XDG_RUNTIME_DIR`` for the clusters of this test run, removed at exit.

    The master's control socket goes to ``$XDG_RUNTIME_DIR/flask-cluster/``: this keeps it out of
    the user's ``/tmp/flask-cluster-<uid>/`` (a SIGKILLed master cannot remove it), in a short
    path because Unix socket paths are limited to about 100 bytes.
    """
    global _runtime_dir
    if _runtime_dir is None:
        _runtime_dir = tempfile.mkdtemp(prefix="fc-")
        atexit.register(shutil.rmtree, _runtime_dir, ignore_errors=True)
    return _runtime_dir


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a cluster (and of ``cluster-ctl``): ours without Flask's settings."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("FLASK_", "WERKZEUG_"))}
    env["XDG_RUNTIME_DIR"] = runtime_dir()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@contextlib.contextmanager
def cluster_process(log_path: Path, app: str, *args: str, env: dict[str, str] | None = None,
                    graceful_timeout: float = 5.0,
                    preexec_fn: Callable[[], None] | None = None) -> Iterator[ClusterProcess]:
    """Start ``flask --app APP cluster-run ARGS`` and always clean up its process group.
    ``preexec_fn`` runs in the child before the command (to set resource limits, say)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cluster_command(app, *args), cwd=ROOT, env=cluster_env(env),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec_fn)
    cluster = ClusterProcess(proc, log_path, graceful_timeout)
    try:
        yield cluster
    finally:
        cluster.stop()


StartCluster = Callable[..., ClusterProcess]


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[StartCluster]:
    """``start_cluster(app, *options, workers=2, wait=True, env=None, preexec_fn=None)``: a
    running cluster.

    Binds port 0 on 127.0.0.1 unless ``--uds`` is given; uses ``--graceful-timeout 5``. Every
    cluster started through the fixture is stopped at teardown, whatever the test did.
    """
    stack = contextlib.ExitStack()
    count = 0

    def start(app: str = "tests.apps.basic", *options: str, workers: int = 2, wait: bool = True,
              env: dict[str, str] | None = None, graceful_timeout: float = 5.0,
              preexec_fn: Callable[[], None] | None = None) -> ClusterProcess:
        nonlocal count
        count += 1
        args = ["--workers", str(workers), "--graceful-timeout", str(graceful_timeout)]
        if "--uds" not in options:
            args += ["--host", "127.0.0.1", "--port", "0"]
        args += options  # after the defaults: click takes the last value of an option
        cluster = stack.enter_context(cluster_process(
            tmp_path / f"cluster-{count}.log", app, *args, env=env,
            graceful_timeout=graceful_timeout, preexec_fn=preexec_fn))
        if wait:
            cluster.wait_started()
        return cluster

    with stack:
        yield start
