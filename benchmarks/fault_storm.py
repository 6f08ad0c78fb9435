"""Workers killed from outside, as the OOM killer does, side by side with gunicorn (issue 16).

Two experiments against a 2-worker server, each server in turn in the same run:

* **kill storm**: ``wrk -t2 -c32 -d10s`` on ``/worker``, with keep-alive and with a new
  connection per request (``Connection: close``), while a worker is sent ``SIGKILL`` every
  0.5 s; wrk's errors, and the longest time with no worker process at all (sampled every 5 ms);
* **kill-at-boot storm**: for 30 s every worker is killed as soon as it appears; how many were
  killed, whether the master still runs, and whether it serves 5 s later.

Cleans up every server by process group.

    python -m benchmarks.fault_storm [--servers flask-cluster,gunicorn-sync]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from benchmarks.reload_faults import ROOT, command, free_port, wait_serving, wrk_counts
from benchmarks.servers import stop_group

KILL_EVERY = 0.5
STORM = 10.0
BOOT_STORM = 30.0


def workers_of(pid: int) -> list[int]:
    """The live children of ``pid`` (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int


@contextlib.contextmanager
def server(name: str) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command(name, port), cwd=ROOT, env=env, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(port)
            yield Server(proc, port)
        finally:
            stop_group(proc)


class Gaps(threading.Thread):
    """The longest stretch during which ``pid`` had no child, sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.longest = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        empty_since: float | None = None
        while not self.stop.wait(0.005):
            now = time.monotonic()
            if workers_of(self.pid):
                empty_since = None
            else:
                empty_since = now if empty_since is None else empty_since
                self.longest = max(self.longest, now - empty_since)


def kill_storm(name: str, close: bool) -> str:
    with server(name) as srv:
        gaps = Gaps(srv.proc.pid)
        gaps.start()
        header = ["-H", "Connection: close"] if close else []
        wrk = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{STORM:.0f}s", *header,
                                f"http://127.0.0.1:{srv.port}/worker"],
                               stdout=subprocess.PIPE, text=True)
        kills = 0
        started = time.monotonic()
        while time.monotonic() - started < STORM - KILL_EVERY:
            time.sleep(KILL_EVERY)
            live = workers_of(srv.proc.pid)
            if live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(live[kills % len(live)], signal.SIGKILL)
                kills += 1
        out, _ = wrk.communicate(timeout=60)
        gaps.stop.set()
        gaps.join()
    total, errors, non2xx = wrk_counts(out)
    return (f"| {name} | {'close' if close else 'keep-alive'} | {kills} | {total} | {errors} | "
            f"{non2xx} | {gaps.longest:.2f} s |")


def serves(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /worker HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(12).startswith(b"HTTP/1.1 200")
    return False


def boot_storm(name: str) -> str:
    with server(name) as srv:
        killed: set[int] = set()
        started = time.monotonic()
        while time.monotonic() - started < BOOT_STORM and srv.proc.poll() is None:
            for pid in workers_of(srv.proc.pid):
                if pid not in killed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.002)
        running = srv.proc.poll() is None
        deadline = time.monotonic() + 5.0
        served = False
        while running and not served and time.monotonic() < deadline:
            served = serves(srv.port)
            time.sleep(0.1)
        code = srv.proc.returncode
    return (f"| {name} | {len(killed)} | {'yes' if running else f'no (exit {code})'} | "
            f"{'yes' if served else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="flask-cluster,gunicorn-sync")
    parser.add_argument("--only", choices=["close", "keep-alive", "boot"], action="append",
                        help="run only these experiments (repeatable)")
    options = parser.parse_args()
    names = options.servers.split(",")
    only = set(options.only or ["close", "keep-alive", "boot"])
    print("| server | connections | kills | requests | wrk socket errors | non-2xx | "
          "longest with no worker |")
    print("|---|---|---|---|---|---|---|")
    for close in (True, False):
        if ("close" if close else "keep-alive") in only:
            for name in names:
                print(kill_storm(name, close), flush=True)
    if "boot" in only:
        print()
        print("| server | workers killed in 30 s | master running | serves within 5 s after |")
        print("|---|---|---|---|")
        for name in names:
            print(boot_storm(name), flush=True)


if __name__ == "__main__":
    main()
