"""Where a flask_cluster worker spends its time, and what the app alone costs. From the repo root:

    python -m benchmarks.hotpath [--seconds 8]

1. Ceilings without a server, in this process: calls per CPU-second of the Flask app, of the raw
   WSGI app, and of flask_cluster's own request path around the raw app (parse, environ,
   start_response, serialize; no sockets, no event loop).
2. py-spy (``record --native -f raw``) on one worker of ``fc-round-robin`` under the keep-alive
   hello-world load, and on the master under the ``Connection: close`` load, where the master
   accepts and hands off every connection. Each sample is charged to the innermost frame that
   belongs to flask_cluster, Flask, Werkzeug or the benchmark app (stdlib and interpreter frames
   count for their caller); a sample whose leaf is a system call wrapper in libc is charged to
   "system calls" instead.

Writes ``benchmarks/out/profile.md`` (and the raw py-spy files next to it) and prints it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .load import run_load
from .report import table
from .servers import SERVERS, serve
from .workloads import WORKLOADS

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT = BENCH_DIR / "out"
PACKAGES = {"flask_cluster/": "flask_cluster", "flask/": "Flask", "werkzeug/": "Werkzeug",
            "benchmarks/": "the app (benchmarks/apps.py)"}
SYSCALLS = {"send", "recv", "sendmsg", "recvmsg", "epoll_wait", "accept4", "accept", "close",
            "__close", "read", "write", "getpeername", "setsockopt", "__libc_sendmsg",
            "__libc_recvmsg", "__libc_send", "__libc_recv", "epoll_ctl", "getpid", "fstat"}
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")

# -- in-process ceilings ----------------------------------------------------------------------


def calls_per_cpu_second(call: Callable[[], None], seconds: float = 2.0) -> float:
    count = 0
    wall_end = time.perf_counter() + seconds
    cpu_start = time.process_time()
    while time.perf_counter() < wall_end:
        for _ in range(100):
            call()
        count += 100
    return count / (time.process_time() - cpu_start)


def _consume(app_iter: Iterable[bytes]) -> None:
    for _chunk in app_iter:
        pass
    close = getattr(app_iter, "close", None)
    if close is not None:
        close()


def ceilings() -> list[tuple[str, float]]:
    from werkzeug.test import EnvironBuilder

    from flask_cluster.http.parser import Limits, RequestParser
    from flask_cluster.http.wsgi import Response, base_environ, build_environ

    from .apps import app, raw_app

    environ = EnvironBuilder(path="/", base_url="http://127.0.0.1:5000").get_environ()

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        return len

    base = base_environ("127.0.0.1", "5000", scheme="http", multithread=False)
    raw_request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nUser-Agent: wrk\r\n\r\n"

    def engine_path(wsgi: Any) -> Callable[[], None]:
        """One request through flask_cluster's own code, minus sockets and the event loop."""
        limits = Limits()
        out: list[bytes] = []

        def call() -> None:
            parser = RequestParser(limits)  # a connection's parser; one per request here
            parser.feed(raw_request)
            request = parser.requests.popleft()
            response = Response(out.append, request)
            app_iter = wsgi(build_environ(request, base, "127.0.0.1", "40000"),
                            response.start_response)
            for chunk in app_iter:
                response.write(chunk)
            response.finish()
            getattr(app_iter, "close", lambda: None)()
            out.clear()

        return call

    return [
        ("Flask app called directly (werkzeug test environ)",
         calls_per_cpu_second(lambda: _consume(app(dict(environ), start_response)))),
        ("raw WSGI app called directly",
         calls_per_cpu_second(lambda: _consume(raw_app(dict(environ), start_response)))),
        ("flask_cluster request path (parse, environ, serialize) around the raw app",
         calls_per_cpu_second(engine_path(raw_app))),
        ("flask_cluster request path around the Flask app",
         calls_per_cpu_second(engine_path(app))),
    ]


# -- py-spy -----------------------------------------------------------------------------------


def parse_frame(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame)
    return (match["name"], match["where"]) if match else (frame, "")


def package_of(where: str) -> str | None:
    if ".py:" not in where:
        return None
    for prefix, name in PACKAGES.items():
        if where.startswith(prefix):
            return name
    return None


def charge(stack: list[str]) -> tuple[str, str, str]:
    """(category, function, file:line) a sample is charged to; ``stack`` is root first."""
    leaf_name, leaf_where = parse_frame(stack[-1])
    caller, line = "", ""
    for frame in reversed(stack):
        name, where = parse_frame(frame)
        package = package_of(where)
        if package is not None:
            caller, line = f"{name} ({where.rsplit(':', 1)[0]})", where
            break
    else:
        package = "other"
    if "libc.so" in leaf_where and leaf_name in SYSCALLS:
        category = "waiting in epoll_wait" if leaf_name == "epoll_wait" else "system calls"
        return category, f"{leaf_name} <- {caller}", line
    return package, caller or leaf_name, line


def summarize(raw: Path) -> dict[str, Any]:
    categories: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()  # flask_cluster lines, system calls they make included
    total = 0
    for text in raw.read_text().splitlines():
        stack_text, _, count_text = text.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        category, function, line = charge(stack_text.split(";"))
        categories[category] += count
        functions[f"{category}: {function}"] += count
        if line.startswith("flask_cluster/") and category != "waiting in epoll_wait":
            own_lines[line] += count
        total += count
    return {"samples": total, "categories": categories, "functions": functions,
            "own_lines": own_lines}


def profile(server_name: str, workload_name: str, role: str, seconds: float) -> dict[str, Any]:
    """py-spy on the master or the first worker while wrk runs the workload."""
    workload = WORKLOADS[workload_name]
    raw = OUT / f"profile-{role}-{workload_name}.txt"
    with serve(SERVERS[server_name], workload.target, OUT, REPO) as server:
        run_load(server.url, workload, 1.0, "wrk")  # warm-up
        pid = server.process.pid if role == "master" else server.workers()[0]
        loads: list[Any] = []
        wrk = threading.Thread(target=lambda: loads.append(
            run_load(server.url, workload, seconds + 2, "wrk")))
        wrk.start()
        time.sleep(1.0)
        subprocess.run([PY_SPY, "record", "--native", "-p", str(pid), "-d", str(int(seconds)),
                        "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
        wrk.join()
    return {"server": server_name, "workload": workload_name, "role": role, "raw": raw.name,
            "rps": loads[0].rps, **summarize(raw)}


def render(ceiling_rows: list[tuple[str, float]], profiles: list[dict[str, Any]]) -> str:
    out = ["### In-process ceilings (no server, no sockets)", "",
           table(["what", "calls per CPU-second", "CPU us per call"],
                 [[what, f"{rate:,.0f}", f"{1e6 / rate:.1f}"] for what, rate in ceiling_rows]),
           ""]
    for prof in profiles:
        total = prof["samples"] or 1
        out += [f"### py-spy: `{prof['server']}` {prof['role']} under `{prof['workload']}`", "",
                f"{prof['samples']} samples; wrk got {prof['rps']:.0f} req/s while py-spy was "
                f"sampling (it stops the process for every sample). Raw stacks: "
                f"`benchmarks/out/{prof['raw']}`.", "",
                table(["charged to", "share of samples"],
                      [[name, f"{100 * count / total:.1f}%"]
                       for name, count in prof["categories"].most_common()]),
                "", "Top functions (the innermost frame of flask_cluster, Flask, Werkzeug or the "
                "app; system calls by the function that made them):", "",
                table(["function", "share of samples"],
                      [[f"`{name}`", f"{100 * count / total:.1f}%"]
                       for name, count in prof["functions"].most_common(20)]),
                "", "Hottest flask_cluster lines (with the system calls they make):", "",
                table(["line", "share of samples"],
                      [[f"`{line}`", f"{100 * count / total:.1f}%"]
                       for line, count in prof["own_lines"].most_common(12)]),
                ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="py-spy sampling time")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = ceilings()
    profiles = [profile("fc-round-robin", "hello", "worker", args.seconds),
                profile("fc-round-robin", "hello-close", "master", args.seconds)]
    text = render(rows, profiles)
    (OUT / "profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
