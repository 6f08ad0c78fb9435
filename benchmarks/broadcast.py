"""Broadcast round trip and throughput to 2, 4 and 8 workers; with ``--broker``, through Redis.

Run from the repository root: ``python -m benchmarks.broadcast``. It starts
``flask --app benchmarks.broadcast_app cluster-run`` per worker count on a free loopback port,
asks its measuring routes, stops the cluster (SIGTERM, then SIGKILL to its process group) and
prints a Markdown table.

``python -m benchmarks.broadcast --broker`` starts its own ``redis-server`` on a free port and,
per worker count W, compares in one run: one cluster of 2W workers over pipes, and two clusters
("hosts") of W workers sharing the Redis. Both have one sender and 2W-1 receivers; the latency is
from ``broadcast()`` to the handler starting in another worker, paced so nothing queues.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.servers import cpu_seconds, descendants, stop_group

ROOT = Path(__file__).resolve().parent.parent
STARTUP = re.compile(r"serving \S+ on (http://\S+) with (\d+) worker")


def start(workers: int, log: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "benchmarks.broadcast_app", "cluster-run",
         "--port", "0", "--workers", str(workers), "--timeout", "120", *options],
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
    stop_group(proc)
    raise RuntimeError("the cluster did not start within 60 s")


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
            stop_group(proc)
    return {**trip, **flow}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    stop_group(proc)
    raise RuntimeError("redis-server did not start within 30 s")


def roles(hosts: list[subprocess.Popen[bytes]], redis_pid: int) -> dict[str, list[int]]:
    """The processes of the two hosts by role, the sending host's first: CPU time is the measure
    that does not move with the load of a shared machine."""
    found: dict[str, list[int]] = {"redis": [redis_pid]}
    for name, proc in zip(("sending", "receiving"), hosts, strict=True):
        found[f"{name} master"] = [proc.pid]
        for pid in descendants(proc.pid):
            link = "broker_link" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            found.setdefault(f"{name} {'link' if link else 'workers'}", []).append(pid)
    return found


def over_pipes_and_redis(workers: int, url: str, messages: int, pings: int,
                         redis_pid: int) -> list[dict[str, Any]]:
    """The same sender and receivers, first over pipes, then across two "hosts" on Redis."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start(2 * workers, Path(tmp, "pipes.log"))
        try:
            results.append({"path": "pipes", **get(f"{base}/latency?n={pings}"),
                            **get(f"{base}/throughput?n={messages}")})
        finally:
            stop_group(proc)
        options = ("--broker", url, "--cluster-name", f"bench-{workers}",
                   "--broker-buffer", str(messages * 2))
        hosts = [start(workers, Path(tmp, f"host-{index}.log"), *options) for index in (0, 1)]
        try:
            base = hosts[0][1]
            deadline = time.monotonic() + 30
            while get(f"{base}/workers")["workers"] < 2 * workers:  # the hosts see each other
                if time.monotonic() > deadline:
                    raise RuntimeError("the two hosts did not see each other within 30 s")
                time.sleep(0.2)
            latency = get(f"{base}/latency?n={pings}")
            by_role = roles([proc for proc, _base in hosts], redis_pid)
            before = {role: sum(map(cpu_seconds, pids)) for role, pids in by_role.items()}
            flow = get(f"{base}/throughput?n={messages}")
            cpu_us = {role: (sum(map(cpu_seconds, pids)) - before[role]) / messages * 1e6
                      for role, pids in by_role.items()}
            results.append({"path": "Redis", **latency, **flow, "cpu_us": cpu_us})
        finally:
            for proc, _base in hosts:
                stop_group(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--pings", type=int, default=1000, help="paced broadcasts (--broker)")
    parser.add_argument("--broker", action="store_true", help="through a local redis-server")
    args = parser.parse_args()
    if args.broker:
        print("| workers per host | path | receivers | latency p50 | p99 | broadcasts/s | "
              "deliveries/s |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as tmp:
            redis_proc, url = start_redis(tmp)
            try:
                cpu = []
                for workers in args.workers or [1, 2]:
                    for result in over_pipes_and_redis(workers, url, args.messages, args.pings,
                                                       redis_proc.pid):
                        print(f"| {workers} | {result['path']} | {result['receivers']} | "
                              f"{result['p50_ms']:.3f} ms | {result['p99_ms']:.3f} ms | "
                              f"{result['broadcasts_per_second']:,.0f} | "
                              f"{result['deliveries_per_second']:,.0f} |", flush=True)
                        if "cpu_us" in result:
                            cpu.append((workers, result["cpu_us"]))
            finally:
                stop_group(redis_proc)
        print("\nCPU time per broadcast through Redis, by process (us):\n")
        print("| workers per host | " + " | ".join(cpu[0][1]) + " |")
        print("|---:|" + "---:|" * len(cpu[0][1]))
        for workers, by_role in cpu:
            print(f"| {workers} | " + " | ".join(f"{us:.1f}" for us in by_role.values()) + " |")
        return
    args.workers = args.workers or [2, 4, 8]
    print("| workers | round trip p50 | p99 | max | broadcasts/s | deliveries/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        result = measure(workers, args.rounds, args.messages)
        print(f"| {workers} | {result['p50_ms']:.3f} ms | {result['p99_ms']:.3f} ms | "
              f"{result['max_ms']:.3f} ms | {result['broadcasts_per_second']:,.0f} | "
              f"{result['deliveries_per_second']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
