"""The same flask_cluster workloads against an earlier revision and the working tree.

Run from the repository root, for example to check the HTTP hardening cost::

    python -m benchmarks.before_after adf447b

The earlier revision is checked out with ``git worktree`` into a temporary directory and put
first on ``PYTHONPATH`` of its cluster; both clusters run the same apps (this tree's
``benchmarks/apps.py``) with 2 workers, alternately, for several rounds, under wrk with
keep-alive and with 8-deep pipelining. The best round of each counts; the table shows the
ratio of the working tree to the earlier revision.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .servers import HOST, free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WORKLOADS = {  # name -> (app target, extra wrk arguments)
    "flask keep-alive": ("benchmarks.apps:app", []),
    "flask Connection: close": ("benchmarks.apps:app", ["-H", "Connection: close"]),
    "flask pipelined x8": ("benchmarks.apps:app", ["-s", "benchmarks/pipeline.lua"]),
    "raw WSGI keep-alive": ("benchmarks.apps:raw_app", []),
    "raw WSGI pipelined x8": ("benchmarks.apps:raw_app", ["-s", "benchmarks/pipeline.lua"]),
}


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                           check=False, capture_output=True)


@contextmanager
def cluster(target: str, package_root: Path, *options: str) -> Iterator[str]:
    port = free_port()
    # ``python -m`` puts its working directory first on sys.path, ahead of PYTHONPATH: run it in
    # a directory that holds only package_root's flask_cluster, so that is the one imported,
    # with this tree's benchmarks (for the apps) after it.
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryFile() as log:
        os.symlink(package_root / "flask_cluster", Path(home, "flask_cluster"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([home, str(ROOT)])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", target, "cluster-run", "--host", HOST,
             "--port", str(port), "--workers", "2", *options],
            cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                log.seek(0)
                if log.read().count(b" ready") >= 2:
                    break
                if proc.poll() is not None:
                    raise RuntimeError("the cluster exited before it was ready")
                time.sleep(0.1)
            yield f"http://{HOST}:{port}/"
        finally:
            stop_group(proc)


def wrk(url: str, extra: list[str], seconds: int) -> float:
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", *extra, url], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    match = RPS.search(out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    args = parser.parse_args()
    best: dict[tuple[str, str], float] = {}
    with worktree(args.revision) as earlier:
        trees = {args.revision: earlier, "working tree": ROOT}
        for round_number in range(args.rounds):
            order = list(trees.items())
            if round_number % 2:
                order.reverse()  # neither side always runs first
            for name, (target, extra) in WORKLOADS.items():
                for label, tree in order:
                    with cluster(target, tree) as url:
                        wrk(url, extra, 1)  # warm-up
                        rps = wrk(url, extra, args.duration)
                    key = (name, label)
                    best[key] = max(best.get(key, 0.0), rps)
                    print(f"round {round_number + 1}: {name:24s} {label:14s} {rps:10.0f} req/s",
                          flush=True)
    print(f"\n| workload | {args.revision} req/s | working tree req/s | ratio |")
    print("|---|---:|---:|---:|")
    for name in WORKLOADS:
        before, after = best[(name, args.revision)], best[(name, "working tree")]
        print(f"| {name} | {before:.0f} | {after:.0f} | {after / before:.2f}x |")


if __name__ == "__main__":
    main()
