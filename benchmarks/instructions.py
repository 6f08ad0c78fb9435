"""CPU instructions per request of a worker's request path: an earlier revision and the working
tree, counted by valgrind's callgrind. From the repository root::

    python -m benchmarks.instructions 5546417 [--requests 2000]
    python -m benchmarks.instructions --metrics     # the working tree, --metrics off and on

Requests per second on these shared 2-vCPU machines move by 10-30 % from one run to the next;
the number of instructions a request executes does not (it is the same to a few tenths of a
percent on every run, whatever else the machine does). So a small change on the request path
is judged here first; ``benchmarks.before_after`` then shows what it means under wrk.

What is counted: :mod:`benchmarks.engine_loop`, one worker engine in one process serving
requests from a socket pair (Flask's hello world and a raw WSGI callable; keep-alive, and a new
connection per request with ``Connection: close``). Each run is made twice, with no requests and
with ``--requests``, and the difference divided, so start-up and imports cancel out. User-space
instructions only: the kernel's side is the same system calls in both trees (check with
``strace -c`` when a change touches I/O). Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from .before_after import ROOT, worktree

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
WORKLOADS = [("flask", "keep-alive"), ("flask", "close"), ("raw", "keep-alive"), ("raw", "close")]


def instructions(tree: Path, app: str, connection: str, requests: int, *extra: str) -> int:
    """Instructions executed by ``engine_loop`` with ``tree``'s flask_cluster for ``requests``."""
    site_packages = sysconfig.get_paths()["purelib"]
    # A fixed hash seed: set and dict layouts, so the work, are the same on every run.
    env = {"PYTHONPATH": f"{tree}:{site_packages}", "PATH": "/usr/bin:/bin",
           "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, "-S", str(ROOT / "benchmarks" / "engine_loop.py"), app,
               connection, str(requests), *extra]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr
    match = COLLECTED.search(out)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{out}")
    return int(match[1])


def per_request(tree: Path, app: str, connection: str, requests: int, *extra: str) -> float:
    # Once unmeasured first: a fresh tree compiles its modules on the first import, which
    # would be charged to whichever run came first.
    instructions(tree, app, connection, 0, *extra)
    return (instructions(tree, app, connection, requests, *extra)
            - instructions(tree, app, connection, 0, *extra)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", nargs="?", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--metrics", action="store_true",
                        help="instead: the working tree with --metrics off and on")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if args.metrics:
        compare_metrics(args.requests)
        return
    if args.revision is None:
        parser.error("a revision, or --metrics")
    print(f"| workload | {args.revision} instructions/request | working tree | ratio |")
    print("|---|---:|---:|---:|")
    with worktree(args.revision) as earlier:
        for app, connection in WORKLOADS:
            before = per_request(earlier, app, connection, args.requests)
            after = per_request(ROOT, app, connection, args.requests)
            print(f"| {app} {connection} | {before:,.0f} | {after:,.0f} | "
                  f"{after / before:.3f}x |", flush=True)


def compare_metrics(requests: int) -> None:
    """What recording each request for ``--metrics`` adds to the request path."""
    print("| workload | --metrics off instructions/request | on | added | ratio |")
    print("|---|---:|---:|---:|---:|")
    for app, connection in WORKLOADS:
        off = per_request(ROOT, app, connection, requests)
        on = per_request(ROOT, app, connection, requests, "metrics")
        print(f"| {app} {connection} | {off:,.0f} | {on:,.0f} | {on - off:,.0f} | "
              f"{on / off:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
