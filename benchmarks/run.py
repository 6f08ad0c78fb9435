"""The benchmark in one command. From the repository root:

    python -m benchmarks.run                      # everything (about 7 minutes on 2 cores)
    python -m benchmarks.run --quick              # smoke run: 1 round of 1 s per measurement
    python -m benchmarks.run --servers fc-round-robin,granian --workloads hello,raw

For each server: start it on a free loopback port, wait until it answers, warm it up, then run
each workload's measured load; read per-worker request counts, memory and CPU time; stop the
server and make sure no process of it is left. All of that ``--rounds`` times, the order of the
servers reversed every other round; the report takes each server's best round per workload, so
that a burst of other load on a shared machine hurts one round, not the comparison. Results go to
``benchmarks/out/results.json`` (written after every server, so an interrupted run keeps what it
measured) and ``benchmarks/out/report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import report
from .load import LoadResult, run_load, wrk_available
from .machine import busy_cpu_seconds, machine, versions
from .servers import SERVERS, RunningServer, ServerFailed, ServerSpec, serve, shown_command
from .workloads import CONNECTIONS, SLOW_EVERY, WORKLOADS, Workload

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT = BENCH_DIR / "out"
CHARTS = BENCH_DIR / "charts"
LOG_PROBLEM = re.compile(r"Traceback|\[(ERROR|CRITICAL)\]")

Results = dict[str, Any]


def pick(text: str | None, known: dict[str, Any], what: str) -> list[str]:
    if not text:
        return list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


@dataclass(frozen=True)
class Settings:
    seconds: float
    warmup: float
    tool: str
    rounds: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", help=f"comma-separated subset of: {', '.join(SERVERS)}")
    parser.add_argument("--workloads", help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, help="measurements per server and workload, "
                                                   "the best counts (default 2)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load after each server start, not counted (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round of 1 s per measurement; charts go to out/charts/")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk if installed (auto), or the Python fallback")
    return parser.parse_args(argv)


def cpu_snapshot(server: RunningServer) -> tuple[float, float, float, float]:
    """(wall clock, CPU busy on the machine, server CPU, load generator CPU), in seconds."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    client = sum(u.ru_utime + u.ru_stime for u in usage)
    return time.monotonic(), busy_cpu_seconds(), server.cpu_seconds(), client


def measure(server: RunningServer, workload: Workload, settings: Settings) -> dict[str, Any]:
    """One measured load; per-worker request counts, CPU time and memory around it."""
    workers_before = server.workers()
    counts_before = server.request_counts()
    cpu_before = cpu_snapshot(server)
    result: LoadResult = run_load(server.url, workload, settings.seconds, settings.tool)
    elapsed, busy, server_cpu, client_cpu = (
        after - before for after, before in zip(cpu_snapshot(server), cpu_before, strict=True))
    counts = server.request_counts()
    workers = server.workers()
    served = {pid: counts.get(pid, 0) - counts_before.get(pid, 0) for pid in workers}
    total = sum(served.values())
    capacity = elapsed * (os.cpu_count() or 1)
    return {
        "server": server.spec.name,
        "workload": workload.name,
        "load": result.to_json(),
        "workers": [{"pid": pid, "requests": count, "share": count / total if total else 0.0}
                    for pid, count in served.items()],
        "worker_pids_changed": workers != workers_before,
        "cpu": {
            "server_seconds": round(server_cpu, 2),
            "client_seconds": round(client_cpu, 2),
            "server_us_per_request": round(1e6 * server_cpu / result.requests, 1)
            if result.requests else None,
            # busy CPU on the machine that was neither the server nor the load generator
            "other_share": round(max(0.0, busy - server_cpu - client_cpu) / capacity, 3),
        },
        "memory": asdict(server.memory()),
    }


def log_problems(server: RunningServer, limit: int = 5) -> list[str]:
    lines = server.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if LOG_PROBLEM.search(line)][:limit]


def bench_server(spec: ServerSpec, workloads: list[Workload], settings: Settings, round_: int,
                 results: Results) -> None:
    """Start ``spec`` once per app the workloads need, measure them, stop it."""
    by_app: dict[str, list[Workload]] = {}
    for workload in workloads:
        by_app.setdefault(workload.target, []).append(workload)
    entry = results["servers"].setdefault(spec.name, {"model": spec.model, "commands": {},
                                                      "stops": []})
    for target, items in by_app.items():
        entry["commands"][target] = shown_command(spec, target)
        problem = {"server": spec.name, "app": target, "round": round_}
        try:
            with serve(spec, target, OUT, REPO) as server:
                if settings.warmup > 0:
                    run_load(server.url, items[0], settings.warmup, settings.tool)
                for workload in items:
                    print(f"  {spec.name:18} {workload.name:12}", end=" ", flush=True)
                    try:
                        run = measure(server, workload, settings)
                    except Exception as exc:  # noqa: BLE001 - one failed run must not end the rest
                        print(f"FAILED: {exc}")
                        results["problems"].append({**problem, "workload": workload.name,
                                                    "error": f"{type(exc).__name__}: {exc}"})
                        continue
                    results["runs"].append({"round": round_, **run})
                    load = run["load"]
                    print(f"{load['rps']:9.0f} req/s  p99 {load['p99_ms']:8.2f} ms  "
                          f"errors {sum(load['errors'].values())}  "
                          f"other load {100 * run['cpu']['other_share']:.0f}%")
        except ServerFailed as exc:
            print(f"  {spec.name}: {exc}")
            results["problems"].append({**problem, "error": str(exc)})
            continue
        stopped = server.stop_result
        assert stopped is not None
        entry["stops"].append({"app": target, "round": round_, **asdict(stopped)})
        found = log_problems(server)
        if stopped.exit_code not in (0, -15) or stopped.killed or found:
            results["problems"].append({**problem, "exit_code": stopped.exit_code,
                                        "stop_seconds": stopped.seconds,
                                        "killed_after_stop": stopped.killed, "log": found})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server_names = pick(args.servers, SERVERS, "servers")
    workload_names = pick(args.workloads, WORKLOADS, "workloads")
    tool = "wrk" if args.load == "wrk" or (args.load == "auto" and wrk_available()) else "python"
    settings = Settings(seconds=args.duration or (1.0 if args.quick else 3.0),
                        warmup=args.warmup, tool=tool,
                        rounds=args.rounds or (1 if args.quick else 2))
    if tool == "python":
        print("wrk not found (or --load python): using the Python load generator; its numbers "
              "are client-bound, fine for a smoke test, not for comparing servers")
    complete = len(server_names) == len(SERVERS) and len(workload_names) == len(WORKLOADS)
    charts = CHARTS if complete and not args.quick and tool == "wrk" else OUT / "charts"
    started = time.monotonic()
    results: Results = {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
            **asdict(settings), "connections": CONNECTIONS, "slow_every": SLOW_EVERY,
            "machine": machine(), "versions": versions(),
        },
        "servers": {}, "runs": [], "problems": [],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.json"
    for round_ in range(1, settings.rounds + 1):
        order = server_names if round_ % 2 else server_names[::-1]
        for name in order:
            print(f"round {round_}/{settings.rounds}, {name}: {SERVERS[name].model}", flush=True)
            bench_server(SERVERS[name], [WORKLOADS[w] for w in workload_names], settings,
                         round_, results)
            results["meta"]["elapsed_seconds"] = round(time.monotonic() - started, 1)
            results_path.write_text(json.dumps(results, indent=1))
    report_path = report.write(results, OUT / "report.md", charts)
    print(f"done in {time.monotonic() - started:.0f}s: {results_path}, {report_path}, "
          f"charts in {charts}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
