"""The scale curve: CPU-route throughput against the number of workers, for each server.

``GET /cpu`` burns 5 ms of CPU per request, so the load generator's own cost (wrk, one thread,
32 keep-alive connections) is small beside the app's, and the figure is how well each server
turns more worker processes into more requests served. Each server runs 1, 2, 4 and 8 workers
(``--workers``); every round measures every server at every count, the server order reversed
every other round, and the table takes each cell's median over the rounds.

On a machine with N cores the curve should rise to N workers and stay flat after (more
processes than cores only share the same cores); it falls after N where a server pays for its
extra processes. The chart goes to ``benchmarks/charts/scale.png`` (matplotlib, from the
``bench`` extra) and the table is printed in the Markdown of ``RESULTS.md``.

    python -m benchmarks.scale --rounds 2 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .load import run_load, wrk_available
from .machine import machine
from .servers import HOST, PY, ServerSpec, serve
from .workloads import WORKLOADS

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CHART = BENCH_DIR / "charts" / "scale.png"
WORKER_COUNTS = (1, 2, 4, 8)
WORKLOAD = WORKLOADS["cpu"]
Spec = Callable[[int], ServerSpec]


def flask_cluster(workers: int) -> ServerSpec:
    def command(target: str, port: str) -> list[str]:
        return [PY, "-m", "flask", "--app", target, "cluster-run", "--host", HOST, "--port", port,
                "--workers", str(workers)]

    return ServerSpec("flask_cluster", f"master + {workers} workers (defaults)", command,
                      multiprocess=True, ready_log=r"worker \d+ \(pid \d+\) ready", workers=workers)


def gunicorn(workers: int) -> ServerSpec:
    def command(target: str, port: str) -> list[str]:
        return [PY, "-m", "gunicorn", "--bind", f"{HOST}:{port}", "--workers", str(workers),
                "--worker-class", "sync", target]

    return ServerSpec("gunicorn-sync", f"arbiter + {workers} sync workers", command,
                      multiprocess=True)


def granian(workers: int) -> ServerSpec:
    def command(target: str, port: str) -> list[str]:
        return [PY, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", port,
                "--workers", str(workers), target]

    return ServerSpec("granian", f"main + {workers} workers", command, multiprocess=True)


SERVERS: dict[str, Spec] = {"flask_cluster": flask_cluster, "gunicorn-sync": gunicorn,
                            "granian": granian}


def measure(spec: ServerSpec, seconds: float, workdir: Path) -> dict[str, Any]:
    with serve(spec, WORKLOAD.target, workdir, REPO) as server:
        run_load(server.url, WORKLOAD, 1.0, "wrk")  # warm up
        result = run_load(server.url, WORKLOAD, seconds, "wrk")
    return {"rps": round(result.rps, 1), "p99_ms": result.p99_ms,
            "errors": sum(result.errors.values())}


def run(servers: list[str], counts: list[int], rounds: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "seconds": seconds, "runs": []}
    with tempfile.TemporaryDirectory(prefix="scale-") as workdir:
        for number in range(rounds):
            for name in servers if number % 2 == 0 else servers[::-1]:
                for workers in counts:
                    measured = measure(SERVERS[name](workers), seconds, Path(workdir))
                    print(f"round {number + 1} {name:14} {workers} workers: "
                          f"{measured['rps']:7.1f} req/s  p99 {measured['p99_ms']:7.1f} ms  "
                          f"errors {measured['errors']}", flush=True)
                    results["runs"].append({"round": number + 1, "server": name,
                                            "workers": workers, **measured})
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return results


def medians(results: dict[str, Any]) -> dict[str, dict[int, float]]:
    cells: dict[str, dict[int, list[float]]] = {}
    for item in results["runs"]:
        cells.setdefault(item["server"], {}).setdefault(item["workers"], []).append(item["rps"])
    return {server: {workers: statistics.median(values) for workers, values in by_count.items()}
            for server, by_count in cells.items()}


def table(results: dict[str, Any]) -> str:
    by_server = medians(results)
    counts = sorted({workers for by_count in by_server.values() for workers in by_count})
    lines = ["| server | " + " | ".join(f"{count} worker{'s' if count > 1 else ''}"
                                       for count in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for server, by_count in by_server.items():
        first = by_count[counts[0]]
        lines.append(f"| {server} | " + " | ".join(
            f"{by_count[count]:.0f} ({by_count[count] / first:.2f}x)" for count in counts) + " |")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # the bench extra; only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_server = medians(results)
    cpus = results["machine"]["usable_cpus"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    for server, by_count in by_server.items():
        counts = sorted(by_count)
        ax.plot(counts, [by_count[count] for count in counts], marker="o", label=server)
    ax.axvline(cpus, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(bottom=0)
    ax.text(cpus, 0, f" {cpus} cores", color="grey", fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(WORKER_COUNTS), [str(count) for count in WORKER_COUNTS])
    ax.set_xlabel("workers")
    ax.set_ylabel("req/s, GET /cpu (5 ms CPU)")
    ax.set_title("Throughput by worker count (higher is better)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--workers", default=",".join(map(str, WORKER_COUNTS)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not wrk_available():
        raise SystemExit("the scale curve needs wrk (apt-get install wrk)")
    servers = [name for name in args.servers.split(",") if name]
    unknown = [name for name in servers if name not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    results = run(servers, [int(count) for count in args.workers.split(",")], args.rounds,
                  args.seconds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    chart(results, args.chart)
    print(f"\nload average before {results['machine']['load_average']}, after "
          f"{results['load_average_after']}; chart: {args.chart}")
    print(table(results))


if __name__ == "__main__":
    main()
