"""Latency under mixed load: do fast requests wait behind slow ones while a worker is free?

Issue 13's measure, 2 workers each: 4 client processes request the fast route (``GET /``) back to
back while 1 client requests ``GET /cpu7`` (7 ms of CPU), for ``--seconds``; the figure is the
p99 latency of the fast requests. Two connection kinds:

* ``close``: a new connection per request (``Connection: close``), so the balancer decides
  where each request goes;
* ``keep-alive``: each client keeps its connection (gunicorn's sync worker closes every one, so
  its clients reconnect each time, as its users' do).

Variants (``--variants``): ``rr-depth1`` and ``lb-depth1`` are round-robin and least-busy with
the default ``--queue-depth 1`` (one connection may wait behind a request younger than 1 ms),
``rr-hold`` and ``lb-hold`` hold every connection in the master while no worker is free
(``--queue-depth 0``), ``shared`` is the shared accept socket, ``gunicorn-sync`` the
reference. ``rev-rr`` and ``rev-lb`` run round-robin and least-busy from the revision given
with ``--revision`` (checked out with ``git worktree``), to compare with code that is gone.
Every round runs every variant (the order reversed every other round), and the report gives
each variant's fast p99 over gunicorn sync's in the same round, the ratio a loaded machine
leaves standing.

    python -m benchmarks.mixed_load --variants rr-depth1,rr-hold,shared,gunicorn-sync --rounds 3
    python -m benchmarks.mixed_load --variants rev-rr,rr-hold,gunicorn-sync --revision main
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .before_after import worktree
from .machine import machine
from .servers import HOST, PY, WORKERS, ServerSpec, serve

REPO = Path(__file__).resolve().parent.parent
APP = "benchmarks.apps:app"
FAST_CLIENTS = 4
SLOW_CLIENTS = 1
FAST_PATH = "/"
SLOW_PATH = "/cpu7"
KINDS = ("close", "keep-alive")


def _cluster(name: str, balance: str, *extra: str) -> ServerSpec:
    def command(target: str, port: str) -> list[str]:
        return [PY, "-m", "flask", "--app", target, "cluster-run", "--host", HOST, "--port", port,
                "--workers", str(WORKERS), "--balance", balance, *extra]

    return ServerSpec(name, f"flask_cluster {balance} {' '.join(extra)}".strip(), command,
                      multiprocess=True, ready_log=r"worker \d+ \(pid \d+\) ready")


def _gunicorn_sync(target: str, port: str) -> list[str]:
    return [PY, "-m", "gunicorn", "--bind", f"{HOST}:{port}", "--workers", str(WORKERS),
            "--worker-class", "sync", target]


VARIANTS: dict[str, ServerSpec] = {spec.name: spec for spec in (
    _cluster("rr-depth1", "round-robin", "--queue-depth", "1"),
    _cluster("rr-hold", "round-robin", "--queue-depth", "0"),
    _cluster("lb-depth1", "least-busy", "--queue-depth", "1"),
    _cluster("lb-hold", "least-busy", "--queue-depth", "0"),
    _cluster("shared", "shared"),
    _cluster("rev-rr", "round-robin"),
    _cluster("rev-lb", "least-busy"),
    ServerSpec("gunicorn-sync", "gunicorn sync", _gunicorn_sync, multiprocess=True),
)}
ON_REVISION = ("rev-rr", "rev-lb")


@contextlib.contextmanager
def revision_root(revision: str | None) -> Iterator[Path | None]:
    """A directory to run a server from that imports ``revision``'s flask_cluster and this
    tree's benchmarks (for the app): ``python -m`` puts its working directory first."""
    if revision is None:
        yield None
        return
    with worktree(revision) as tree, tempfile.TemporaryDirectory(prefix="mixed-rev-") as home:
        os.symlink(tree / "flask_cluster", Path(home, "flask_cluster"))
        os.symlink(REPO / "benchmarks", Path(home, "benchmarks"))
        yield Path(home)


# -- the clients (one process each) ---------------------------------------------------------------

def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bool]:
    """One response off ``sock``: (status, whether the server keeps the connection open)."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1").lower()
    status = int(head[9:12])
    length = 0
    for line in head.split("\r\n")[1:]:
        if line.startswith("content-length:"):
            length = int(line[15:])
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response")
        buffer += chunk
    del buffer[:total]
    return status, "connection: close" not in head


def client(port: int, path: str, keep_alive: bool, until: float, out: Any) -> None:
    """Request ``path`` back to back until ``until``; put (latencies in seconds, errors)."""
    close = "" if keep_alive else "Connection: close\r\n"
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{close}\r\n".encode()
    latencies: list[float] = []
    errors = 0
    sock: socket.socket | None = None
    buffer = bytearray()
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer.clear()
            sock.sendall(request)
            status, open_ = _read_response(sock, buffer)
        except OSError:
            errors += 1
            if sock is not None:
                sock.close()
            sock = None
            continue
        latencies.append(time.perf_counter() - started)
        if status != 200:
            errors += 1
        if not (keep_alive and open_):
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    out.put((path, latencies, errors))


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else 0.0


@dataclass
class Measure:
    fast_p50_ms: float
    fast_p99_ms: float
    fast_requests: int
    slow_requests: int
    errors: int


def mixed(port: int, kind: str, seconds: float) -> Measure:
    """The clients against ``port`` at once, for ``seconds``."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    until = time.monotonic() + seconds
    keep_alive = kind == "keep-alive"
    paths = [FAST_PATH] * FAST_CLIENTS + [SLOW_PATH] * SLOW_CLIENTS
    procs = [context.Process(target=client, args=(port, path, keep_alive, until, out))
             for path in paths]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join()
    fast = [latency for path, latencies, _ in results if path == FAST_PATH for latency in latencies]
    slow = sum(len(latencies) for path, latencies, _ in results if path == SLOW_PATH)
    return Measure(round(percentile(fast, 50) * 1000, 2), round(percentile(fast, 99) * 1000, 2),
                   len(fast), slow, sum(errors for _, _, errors in results))


# -- the run --------------------------------------------------------------------------------------

def run(variants: list[str], kinds: list[str], rounds: int, seconds: float,
        revision: str | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "seconds": seconds, "revision": revision,
                               "rounds": []}
    with tempfile.TemporaryDirectory(prefix="mixed-load-") as workdir, \
            revision_root(revision) as old_root:
        for number in range(rounds):
            order = variants if number % 2 == 0 else variants[::-1]
            measured: dict[str, dict[str, Measure]] = {}
            for name in order:
                root = old_root if name in ON_REVISION else REPO
                assert root is not None, "--revision is needed for " + name
                with serve(VARIANTS[name], APP, Path(workdir), root) as server:
                    mixed(server.port, "close", 1.0)  # warm up: imports, first requests
                    measured[name] = {kind: mixed(server.port, kind, seconds) for kind in kinds}
                for kind, result in measured[name].items():
                    say(f"round {number + 1} {name:14} {kind:10} fast p50 {result.fast_p50_ms:6.2f} "
                        f"p99 {result.fast_p99_ms:6.2f} ms  fast {result.fast_requests:6d} "
                        f"slow {result.slow_requests:5d} errors {result.errors}")
            results["rounds"].append({name: {kind: vars(m) for kind, m in by_kind.items()}
                                      for name, by_kind in measured.items()})
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def table(results: dict[str, Any], variants: list[str], kinds: list[str]) -> str:
    """Median fast p99 per variant and kind, and the median of the per-round ratios to
    gunicorn sync's fast p99 in the same round."""
    lines = ["| variant | " + " | ".join(f"{kind}: fast p99 ms (x gunicorn sync)" for kind in kinds)
             + " | errors |", "|---|" + "---|" * len(kinds) + "---|"]
    for name in variants:
        cells = []
        for kind in kinds:
            p99s = [r[name][kind]["fast_p99_ms"] for r in results["rounds"]]
            cell = f"{statistics.median(p99s):.2f}"
            if name != "gunicorn-sync" and "gunicorn-sync" in variants:
                ratios = [r[name][kind]["fast_p99_ms"] / r["gunicorn-sync"][kind]["fast_p99_ms"]
                          for r in results["rounds"]]
                cell += f" ({statistics.median(ratios):.2f}x; rounds " + \
                        ", ".join(f"{ratio:.2f}" for ratio in ratios) + ")"
            cells.append(cell)
        errors = sum(r[name][kind]["errors"] for r in results["rounds"] for kind in kinds)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="rr-depth1,rr-hold,shared,gunicorn-sync")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--revision", help="the revision rev-rr and rev-lb run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    variants = [name for name in args.variants.split(",") if name]
    kinds = [kind for kind in args.kinds.split(",") if kind]
    unknown = [name for name in variants if name not in VARIANTS] + \
              [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (variants: {', '.join(VARIANTS)}; "
                         f"kinds: {', '.join(KINDS)})")
    if any(name in ON_REVISION for name in variants) and not args.revision:
        raise SystemExit("rev-rr and rev-lb need --revision")
    results = run(variants, kinds, args.rounds, args.seconds, args.revision)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print(f"load average before {results['machine']['load_average']}, after "
          f"{results['load_average_after']}")
    print(table(results, variants, kinds))


if __name__ == "__main__":
    main()
