"""What the operations tests use besides ``tests.conftest``: a load generator that counts every
failure, ``flask cluster-ctl`` as a user runs it, a cluster started in a directory of our
choosing, and the master's log lines parsed."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, ClusterProcess, cluster_command, cluster_env, read_reply

# A reused keep-alive connection the server closed at the moment we sent on it. RFC 9112 9.3.1
# lets a client retry an idempotent request then (browsers and urllib3 do); we retry once on a
# new connection and count it apart. Anything else, and a failed retry, is a failed request.
STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)
LOG_LINE = re.compile(r"^(?P<date>\S+ \S+) \[\d+\] \[(?P<level>\w+)\] (?P<name>\S+): (?P<message>.*)$",
                      re.MULTILINE)


@dataclass
class Outcome:
    at: float
    kind: str  # "new": a new connection per request; "keep": a keep-alive connection
    status: int
    body: Any  # the JSON body
    connection: int = 0  # which client connection carried it (numbered as opened)


@dataclass
class Load:
    """Client threads requesting ``path`` until :meth:`stop`: ``new`` threads open a connection per
    request, ``keep`` threads reuse keep-alive connections. Every failure is recorded."""

    cluster: ClusterProcess
    path: str = "/worker"
    new: int = 2
    keep: int = 2
    pause: float = 0.005  # between a thread's requests: steady load, some CPU left for the cluster
    timeout: float = 15.0
    limit: float = 90.0  # no thread runs longer than this, whatever the test does
    # As wrk counts: a keep-alive connection the server closed without "Connection: close"
    # (a request sent on it failed, or it was found closed while idle) is a failure, even when
    # a retry on a new connection would succeed.
    strict: bool = False
    stagger: float = 0.0  # seconds between thread starts: one connect per accept, spread in turn
    connections: int = 0  # connections opened by the load
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for kind, count in (("new", self.new), ("keep", self.keep)):
            for index in range(count):
                thread = threading.Thread(target=self._run, args=(kind,), daemon=True,
                                          name=f"load-{kind}-{index}")
                thread.start()
                self._threads.append(thread)
                time.sleep(self.stagger)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread hangs"

    def count(self) -> int:
        return len(self.outcomes)

    def wait_for_more(self, more: int, timeout: float = 20.0) -> None:
        """Wait until ``more`` further requests were answered (the cluster is serving)."""
        target = self.count() + more
        deadline = time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < deadline, \
                f"only {self.count()} of {target} requests answered after {timeout}s"
            time.sleep(0.02)

    def served_by(self) -> dict[int, int]:
        """Requests answered per worker pid."""
        counts: dict[int, int] = {}
        for outcome in list(self.outcomes):
            pid = outcome.body["pid"]
            counts[pid] = counts.get(pid, 0) + 1
        return counts

    def _record(self, kind: str, reply: Any, connection: int = 0) -> None:
        if reply.status != 200:
            self.failures.append(f"{kind}: HTTP {reply.status} {reply.text[:200]}")
            return
        self.outcomes.append(Outcome(time.monotonic(), kind, reply.status, reply.json(),
                                     connection))

    def connections_served_by_several(self) -> int:
        """Keep-alive connections whose requests were answered by more than one worker."""
        pids: dict[int, set[int]] = {}
        for outcome in list(self.outcomes):
            if outcome.kind == "keep":
                pids.setdefault(outcome.connection, set()).add(outcome.body["pid"])
        return sum(len(seen) > 1 for seen in pids.values())

    def _run(self, kind: str) -> None:
        conn: http.client.HTTPConnection | None = None
        reused = False
        number = 0
        end = time.monotonic() + self.limit
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                if conn is not None and _dropped(conn):
                    conn.close()  # closed by the server while idle: as urllib3 does, reconnect
                    conn = None
                    if self.strict:
                        self.failures.append(f"{kind}: closed by the server while idle")
                if conn is None:
                    conn = self.cluster.connection(self.timeout)
                    with self._lock:
                        self.connections += 1
                        number = self.connections
                    reused = False
                headers = {} if kind == "keep" else {"Connection": "close"}
                try:
                    reply = read_reply(conn, "GET", self.path, headers=headers)
                except STALE as exc:
                    conn.close()
                    conn = None
                    if not reused or self.strict:
                        self.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                        continue
                    self.retries.append(f"{kind}: {type(exc).__name__}: {exc}")
                    number = 0  # the retry's connection is not counted
                    try:
                        reply = self.cluster.request(self.path, timeout=self.timeout)
                    except Exception as retry_exc:  # noqa: BLE001 - every failure is counted
                        self.failures.append(f"{kind} retry: {type(retry_exc).__name__}: "
                                             f"{retry_exc}")
                        continue
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    self.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    conn.close()
                    conn = None
                    continue
                else:
                    if kind == "new" or reply.headers.get("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    else:
                        reused = True
                self._record(kind, reply, number)
                time.sleep(self.pause)
        finally:
            if conn is not None:
                conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle connection that is readable was closed by the peer (urllib3's wait_for_read)."""
    sock = conn.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


# -- cluster-ctl ---------------------------------------------------------------------------------


def ctl(*args: str, control_socket: str | Path | None = None, app: str | None = None,
        env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``flask [--app APP] cluster-ctl [--control-socket P] ARGS`` as a user types it, in the
    clusters' environment plus ``env``, without the variables ``unset``."""
    command = [sys.executable, "-m", "flask"]
    if app is not None:
        command += ["--app", app]
    command.append("cluster-ctl")
    if control_socket is not None:
        command += ["--control-socket", str(control_socket)]
    command += args
    environment = cluster_env(env)
    for name in unset:
        environment.pop(name, None)
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def ctl_ok(*args: str, **options: Any) -> str:
    done = ctl(*args, **options)
    assert done.returncode == 0, f"cluster-ctl {' '.join(args)}: exit {done.returncode}\n" \
                                 f"{done.stdout}{done.stderr}"
    return done.stdout


def status(control_socket: str | Path, **options: Any) -> dict[str, Any]:
    """``cluster-ctl status --json``, parsed."""
    result: dict[str, Any] = json.loads(ctl_ok("status", "--json", control_socket=control_socket,
                                               **options))
    return result


def settled(state: dict[str, Any], count: int) -> bool:
    """Exactly workers 0..count-1, each ready (retired ones gone)."""
    workers = state["workers"]
    return state["master"]["workers"] == count \
        and [w["worker_id"] for w in workers] == list(range(count)) \
        and all(w["state"] == "ready" for w in workers)


def wait_settled(control_socket: str | Path, count: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``status --json`` until :func:`settled`; returns that status."""
    deadline = time.monotonic() + timeout
    while True:
        state = status(control_socket)
        if settled(state, count):
            return state
        assert time.monotonic() < deadline, \
            f"not settled at {count} workers after {timeout}s: {json.dumps(state)}"
        time.sleep(0.2)


# -- the log -------------------------------------------------------------------------------------


def log_messages(log: str, name: str = "flask_cluster.master") -> list[tuple[float, str]]:
    """(seconds since the epoch, message) of every line logged by ``name``."""
    found = []
    for match in LOG_LINE.finditer(log):
        if match["name"] == name:
            stamp = time.mktime(time.strptime(match["date"][:19], "%Y-%m-%d %H:%M:%S"))
            found.append((stamp + int(match["date"][20:23]) / 1000, match["message"]))
    return found


def count_lines(cluster: ClusterProcess, text: str) -> int:
    return cluster.log().count(text)


def wait_log_count(cluster: ClusterProcess, text: str, count: int, timeout: float = 30.0) -> None:
    """Wait until ``text`` appears ``count`` times in the log (the master still running)."""
    deadline = time.monotonic() + timeout
    while count_lines(cluster, text) < count:
        assert cluster.proc.poll() is None, f"cluster-run exited:\n{cluster.log()}"
        assert time.monotonic() < deadline, \
            f"{text!r} not seen {count} times after {timeout}s:\n{cluster.log()}"
        time.sleep(0.05)


# -- a cluster started where the test says -------------------------------------------------------


@contextlib.contextmanager
def cluster_in(cwd: Path, log_path: Path, app: str, *args: str,
               env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
               graceful_timeout: float = 5.0, wait: bool = True) -> Iterator[ClusterProcess]:
    """Like ``tests.conftest.cluster_process`` with the working directory ``cwd`` (``--reload``
    watches it) and environment variables ``unset``; always cleans up the process group."""
    environment = cluster_env(env)
    for name in unset:
        environment.pop(name, None)
    command = cluster_command(app, "--host", "127.0.0.1", "--port", "0",
                              "--graceful-timeout", str(graceful_timeout), *args)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = ClusterProcess(proc, log_path, graceful_timeout)
    try:
        if wait:
            cluster.wait_started()
        yield cluster
    finally:
        cluster.stop()

