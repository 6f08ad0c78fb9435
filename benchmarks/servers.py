"""How each server is started, how we know it is ready, what it costs in memory, how it stops.

Every server is started in a session of its own (``start_new_session=True``) so that the whole
process tree can be found and, if it does not stop when asked, killed by process group. Only
127.0.0.1 is ever used.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .apps import COUNTER_DIR_ENV

HOST = "127.0.0.1"
WORKERS = 2
GTHREAD_THREADS = 4
WAITRESS_THREADS = 4
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PY = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Command = Callable[[str, str], list[str]]  # (app target "module:name", port) -> argv


@dataclass(frozen=True)
class ServerSpec:
    name: str
    model: str  # the process model, as the report shows it
    command: Command
    multiprocess: bool  # a master/arbiter with worker children, or one process doing it all
    ready_log: str | None = None  # a log line every worker prints once it can serve
    workers: int = WORKERS  # how many print it


def _flask_cluster(balance: str, *, metrics: bool = False) -> ServerSpec:
    """``metrics``: with ``--metrics`` on (any free port; nothing scrapes it), to set beside
    the same balance mode without, in one run (needs flask-cluster[metrics])."""
    extra = ["--metrics", f"{HOST}:0"] if metrics else []

    def command(target: str, port: str) -> list[str]:
        return [PY, "-m", "flask", "--app", target, "cluster-run", "--host", HOST,
                "--port", port, "--workers", str(WORKERS), "--balance", balance, *extra]

    return ServerSpec(f"fc-{balance}{'-metrics' if metrics else ''}",
                      f"master + {WORKERS} workers, 1 thread each{', --metrics' if metrics else ''}",
                      command, multiprocess=True, ready_log=r"worker \d+ \(pid \d+\) ready")


def _gunicorn(*extra: str) -> Command:
    def command(target: str, port: str) -> list[str]:
        return [PY, "-m", "gunicorn", "--bind", f"{HOST}:{port}", "--workers", str(WORKERS),
                *extra, target]

    return command


def _granian(target: str, port: str) -> list[str]:
    return [PY, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", port,
            "--workers", str(WORKERS), target]


def _waitress(target: str, port: str) -> list[str]:
    return [PY, "-m", "waitress", f"--listen={HOST}:{port}", f"--threads={WAITRESS_THREADS}",
            target]


def _werkzeug(target: str, port: str) -> list[str]:
    return [PY, "-m", "flask", "--app", target, "run", "--host", HOST, "--port", port,
            "--with-threads", "--no-reload", "--no-debugger"]


SERVERS: dict[str, ServerSpec] = {spec.name: spec for spec in (
    _flask_cluster("round-robin"),
    _flask_cluster("least-busy"),
    _flask_cluster("shared"),
    _flask_cluster("reuseport"),
    _flask_cluster("round-robin", metrics=True),
    ServerSpec("gunicorn-sync", f"arbiter + {WORKERS} sync workers (no keep-alive)",
               _gunicorn("--worker-class", "sync"), multiprocess=True),
    ServerSpec("gunicorn-gthread", f"arbiter + {WORKERS} workers x {GTHREAD_THREADS} threads",
               _gunicorn("--worker-class", "gthread", "--threads", str(GTHREAD_THREADS)),
               multiprocess=True),
    ServerSpec("granian", f"main + {WORKERS} workers (Rust I/O, default threads)", _granian,
               multiprocess=True),
    ServerSpec("waitress", f"1 process x {WAITRESS_THREADS} threads (no workers)", _waitress,
               multiprocess=False),
    ServerSpec("werkzeug", "1 process, a thread per connection (dev server)", _werkzeug,
               multiprocess=False),
)}


def shown_command(spec: ServerSpec, target: str) -> str:
    """The command line as the report shows it: ``python``, and ``PORT`` for the free port."""
    return " ".join(["python", *spec.command(target, "PORT")[1:]])


class ServerFailed(Exception):
    """The server did not come up; the message carries the tail of its log."""


@dataclass
class Memory:
    """Resident memory in KiB: ``master`` is None for a single-process server."""

    master_rss: int | None
    worker_rss: list[int]
    master_pss: int | None
    worker_pss: list[int]


@dataclass
class StopResult:
    exit_code: int | None
    seconds: float
    killed: list[int] = field(default_factory=list)  # pids still alive after STOP_TIMEOUT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group ``proc`` leads, 15 s to finish, then SIGKILL to what is
    left: every benchmark stops its servers so, by group, never by name."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group), or None if the process is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[1]), int(fields[2]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        info = _proc_stat(pid)
        if info is not None:
            children.setdefault(info[0], []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def group_members(pgid: int) -> list[int]:
    return [pid for pid in _all_pids() if (info := _proc_stat(pid)) and info[1] == pgid]


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss:")


class RunningServer:
    def __init__(self, spec: ServerSpec, target: str, port: int, process: subprocess.Popen[bytes],
                 log_path: Path, counter_dir: Path) -> None:
        self.spec = spec
        self.target = target
        self.port = port
        self.process = process
        self.log_path = log_path
        self.counter_dir = counter_dir
        self.stop_result: StopResult | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def workers(self) -> list[int]:
        if not self.spec.multiprocess:
            return [self.process.pid]
        return descendants(self.process.pid)

    def memory(self) -> Memory:
        workers = self.workers()
        master = self.process.pid if self.spec.multiprocess else None
        return Memory(
            master_rss=rss_kib(master) if master else None,
            worker_rss=[rss_kib(pid) for pid in workers],
            master_pss=pss_kib(master) if master else None,
            worker_pss=[pss_kib(pid) for pid in workers],
        )

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (the master included)."""
        return sum(cpu_seconds(pid) for pid in {self.process.pid, *self.workers()})

    def request_counts(self) -> dict[int, int]:
        """Requests served so far by each process (see ``apps.RequestCounter``)."""
        counts = {}
        for path in self.counter_dir.iterdir():
            data = path.read_bytes()
            if len(data) == 8:
                counts[int(path.name)] = int.from_bytes(data, sys.byteorder, signed=True)
        return counts

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self) -> None:
        """Until it answers ``GET /`` with 200 and, if it says so in its log, every worker is up."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._answers():
            self._check_alive(deadline)
            time.sleep(0.05)
        pattern = self.spec.ready_log
        while pattern is not None and \
                len(re.findall(pattern, self.log_path.read_text(errors="replace"))) < self.spec.workers:
            self._check_alive(deadline)
            time.sleep(0.05)

    def _check_alive(self, deadline: float) -> None:
        code = self.process.poll()
        if code is not None:
            raise ServerFailed(f"{self.spec.name} exited with code {code}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise ServerFailed(f"{self.spec.name} not ready after {READY_TIMEOUT:g}s:\n"
                               f"{self.log_tail()}")

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> StopResult:
        """SIGTERM to the server's main process, as an init system would; SIGKILL to its whole
        process group if anything is left after STOP_TIMEOUT."""
        started = time.monotonic()
        pgid = self.process.pid  # start_new_session: the group leader
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            code: int | None = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        deadline = time.monotonic() + 2.0
        left = group_members(pgid)
        while left and code is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # children a clean master signalled may still be exiting
            left = group_members(pgid)
        if left:
            os.killpg(pgid, signal.SIGKILL)
            if code is None:
                code = self.process.wait()
        return StopResult(code, round(time.monotonic() - started, 2), left)


@contextmanager
def serve(spec: ServerSpec, target: str, workdir: Path, repo: Path) -> Iterator[RunningServer]:
    """Start ``spec`` serving ``target``; always stopped (and its tree killed) on the way out."""
    port = free_port()
    app_name = target.rsplit(":", 1)[-1]
    log_path = workdir / "logs" / f"{spec.name}-{app_name}.log"
    counter_dir = workdir / "counters" / f"{spec.name}-{app_name}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    counter_dir.mkdir(parents=True, exist_ok=True)
    for stale in counter_dir.iterdir():
        stale.unlink()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FLASK_", "GUNICORN_", "GRANIAN_"))}
    env.update({"PYTHONPATH": str(repo), COUNTER_DIR_ENV: str(counter_dir),
                "PYTHONUNBUFFERED": "1"})
    with log_path.open("wb") as log:
        process = subprocess.Popen(spec.command(target, str(port)), cwd=repo, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = RunningServer(spec, target, port, process, log_path, counter_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop_result = server.stop()
