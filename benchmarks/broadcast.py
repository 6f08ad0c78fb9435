"""Broadcast round trip and throughput to 2, 4 and 8 workers.

Run from the repository root: ``python -m benchmarks.broadcast``. It starts
``flask --app benchmarks.broadcast_app cluster-run`` per worker count on a free loopback port,
asks its measuring routes, stops the cluster (SIGTERM, then SIGKILL to its process group) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STARTUP = re.compile(r"serving \S+ on (http://\S+) with (\d+) worker")


def start(workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "benchmarks.broadcast_app", "cluster-run",
         "--port", "0", "--workers", str(workers), "--timeout", "120"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = STARTUP.search(text)
        if match and text.count(" ready") >= workers:
            return proc, match[1]
        if proc.poll() is not None:
            raise RuntimeError(f"the cluster exited:\n{text}")
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError("the cluster did not start within 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
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


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=120) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def measure(workers: int, rounds: int, messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start(workers, Path(tmp, "cluster.log"))
        try:
            get(f"{base}/round-trip?n=50")  # warm up every worker's path
            trip = get(f"{base}/round-trip?n={rounds}")
            flow = get(f"{base}/throughput?n={messages}")
        finally:
            stop(proc)
    return {**trip, **flow}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    print("| workers | round trip p50 | p99 | max | broadcasts/s | deliveries/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        result = measure(workers, args.rounds, args.messages)
        print(f"| {workers} | {result['p50_ms']:.3f} ms | {result['p99_ms']:.3f} ms | "
              f"{result['max_ms']:.3f} ms | {result['broadcasts_per_second']:,.0f} | "
              f"{result['deliveries_per_second']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
