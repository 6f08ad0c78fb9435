"""Requests that fail while workers are replaced on purpose, under keep-alive load (issue 16).

Runs ``wrk -t2 -c32 -d20s`` (keep-alive) against a 2-worker server and sends it three rolling
reloads (``SIGHUP``) at 4, 9 and 14 s; prints wrk's request count and its errors. ``--root``
runs the flask_cluster of another checkout (``git archive main | tar -x -C /tmp/main``), for a
before/after on one machine. Cleans up its server by process group.

    python -m benchmarks.reload_faults [--server flask-cluster|gunicorn-sync] [--root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.servers import stop_group

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.ops_apps.ops"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(server: str, port: int) -> list[str]:
    if server == "gunicorn-sync":
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--worker-class", "sync", f"{APP}:create_app()"]
    return [sys.executable, "-m", "flask", "--app", APP, "cluster-run", "--workers", "2",
            "--host", "127.0.0.1", "--port", str(port)]


def wait_serving(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET /worker HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(12).startswith(b"HTTP/1.1 200"):
                time.sleep(1.0)  # every worker up
                return
        time.sleep(0.1)
    raise SystemExit("the server did not start")


def run(server: str, root: Path, reloads: tuple[float, ...] = (4.0, 9.0, 14.0)) -> str:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command(server, port), cwd=root, env=env, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(port)
            wrk = subprocess.Popen(["wrk", "-t2", "-c32", "-d20s",
                                    f"http://127.0.0.1:{port}/worker"],
                                   stdout=subprocess.PIPE, text=True)
            started = time.monotonic()
            for at in reloads:
                time.sleep(max(0.0, started + at - time.monotonic()))
                os.kill(proc.pid, signal.SIGHUP)
            out, _ = wrk.communicate(timeout=60)
        finally:
            stop_group(proc)
        log.seek(0)
        text = log.read().decode(errors="replace")
    done = len(re.findall(r"reload complete|Handling signal: hup", text))
    total, errors, non2xx = wrk_counts(out)
    return (f"{server} ({root}): {total} requests, socket errors: {errors}, "
            f"non-2xx: {non2xx}, reloads seen in its log: {done}")


def wrk_counts(out: str) -> tuple[str, str, str]:
    """Requests, socket errors and non-2xx responses as wrk printed them."""
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (total[1] if total else "?", errors[1] if errors else "none",
            non2xx[1] if non2xx else "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["flask-cluster", "gunicorn-sync"],
                        default="flask-cluster")
    parser.add_argument("--root", type=Path, default=ROOT)
    options = parser.parse_args()
    print(run(options.server, options.root.resolve()))


if __name__ == "__main__":
    main()
