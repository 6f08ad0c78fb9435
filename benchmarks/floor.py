"""The floor: the least a Python server of our design can cost per keep-alive request here.

Not a server for anything but this measurement. Like flask_cluster's workers, it forks 2
processes, each with an epoll loop on a shared listening socket; unlike them it does no HTTP at
all: each read is answered with one fixed response per request it holds (counted by the blank
line that ends a head), whatever the request says. No parsing, no environ, no scoreboard. So its
server CPU per request is the kernel's socket work plus the least Python an event loop needs,
and what flask_cluster spends above it is its HTTP/WSGI path. Keep-alive only (it never closes a
connection itself). Two kinds:

* ``floor``: no WSGI call at all (the raw WSGI workload only);
* ``floor-wsgi``: for each request it also calls the workload's app with a copy of one environ
  built once (werkzeug's ``EnvironBuilder``) and consumes its body, then sends the same fixed
  answer. With the Flask hello app, that is the fastest any Python WSGI server could serve the
  hello workload here: the ceiling for a "req/s against granian" target.

From the repository root::

    python -m benchmarks.floor [--rounds 3] [--duration 4]

measures both, ``fc-round-robin`` and granian on the raw WSGI and Flask hello workloads with
benchmarks.run's harness (same wrk load, best round each, server order reversed every other
round) and prints req/s, the ratio to granian and server CPU per request side by side.
"""

from __future__ import annotations

import argparse
import io
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any

from werkzeug.test import EnvironBuilder
from werkzeug.utils import import_string

from .apps import COUNTER_DIR_ENV, RequestCounter
from .run import Settings, bench_server
from .servers import HOST, PY, SERVERS, WORKERS, ServerSpec
from .workloads import WORKLOADS

FLOOR = ServerSpec("floor", f"main + {WORKERS} processes, epoll, a fixed answer, no HTTP",
                   lambda _target, port: [PY, "-m", "benchmarks.floor", "--serve", port],
                   multiprocess=True)
FLOOR_WSGI = ServerSpec("floor-wsgi", "as floor, and the app called with a copy of one environ",
                        lambda target, port: [PY, "-m", "benchmarks.floor", "--serve", port,
                                              "--app", target],
                        multiprocess=True)

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"Hello, World!")


Answer = Callable[[int], bytes]  # the answer to a read holding this many requests


def fixed_answer(counter: RequestCounter) -> Answer:
    def answer(requests: int) -> bytes:
        for _ in range(requests):
            counter.hit()
        return RESPONSE * requests

    return answer


def wsgi_answer(target: str, port: int) -> Answer:
    """Call the app (which counts itself, apps.instrument) once per request; the fixed answer."""
    app = import_string(target)
    environ = EnvironBuilder(path="/", base_url=f"http://{HOST}:{port}",
                             headers=[("User-Agent", "wrk")]).get_environ()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return len

    def answer(requests: int) -> bytes:
        for _ in range(requests):
            request_environ = dict(environ)
            request_environ["wsgi.input"] = io.BytesIO()
            body = app(request_environ, start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return RESPONSE * requests

    return answer


def serve(listener: socket.socket, answer: Answer) -> None:
    poll = select.epoll()
    poll.register(listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
    connections: dict[int, socket.socket] = {}
    while True:
        for fd, _events in poll.poll():
            if fd == listener.fileno():
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections[conn.fileno()] = conn
                poll.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = connections[fd]
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                poll.unregister(fd)
                del connections[fd]
                conn.close()
                continue
            # a few hundred bytes: the kernel takes them whole
            conn.send(answer(data.count(b"\r\n\r\n")))


def run_floor(port: int, target: str | None) -> None:
    listener = socket.create_server((HOST, port), backlog=2048)
    listener.setblocking(False)
    if target is None:
        answer = fixed_answer(RequestCounter(os.environ.get(COUNTER_DIR_ENV)))
    else:
        answer = wsgi_answer(target, port)
    children = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serve(listener, answer)
        children.append(pid)

    def stop(_signum: int, _frame: Any) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        os.waitpid(pid, 0)



def compare(rounds: int, seconds: float) -> None:
    plan = [(FLOOR, ["raw"]), (FLOOR_WSGI, ["raw", "hello"]),
            (SERVERS["fc-round-robin"], ["raw", "hello"]), (SERVERS["granian"], ["raw", "hello"])]
    settings = Settings(seconds=seconds, warmup=1.0, tool="wrk", rounds=rounds)
    results: dict[str, Any] = {"servers": {}, "runs": [], "problems": []}
    for round_ in range(1, rounds + 1):
        for spec, names in plan if round_ % 2 else plan[::-1]:
            bench_server(spec, [WORKLOADS[name] for name in names], settings, round_, results)

    def best(server: str, workload: str) -> dict[str, Any] | None:
        runs = [run for run in results["runs"]
                if run["server"] == server and run["workload"] == workload]
        return max(runs, key=lambda run: run["load"]["rps"]) if runs else None

    print("| workload | server | req/s (best round) | vs granian | server CPU us/request |")
    print("|---|---|---:|---:|---:|")
    for workload in ("raw", "hello"):
        granian = best("granian", workload)
        for spec, names in plan:
            if workload not in names:
                continue
            run = best(spec.name, workload)
            if run is None:
                print(f"| {workload} | `{spec.name}` | failed | | |")
                continue
            rps = run["load"]["rps"]
            ratio = f"{rps / granian['load']['rps']:.2f}x" if granian else "-"
            print(f"| {workload} | `{spec.name}` | {rps:.0f} | {ratio} | "
                  f"{run['cpu']['server_us_per_request']} |")
    for problem in results["problems"]:
        print("problem:", problem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, metavar="PORT", help="be the floor server")
    parser.add_argument("--app", metavar="TARGET", help="with --serve: call this WSGI app")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    if args.serve is not None:
        run_floor(args.serve, args.app)
    else:
        compare(args.rounds, args.duration)


if __name__ == "__main__":
    main()
