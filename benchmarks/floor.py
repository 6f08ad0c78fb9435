"""The floor: the least a Python server of our design can cost per keep-alive request here.

Not a server for anything but this measurement. Like flask_cluster's workers, it forks 2
processes, each with an epoll loop on a shared listening socket; unlike them it does no HTTP at
all: each read is answered with one fixed response per request it holds (counted by the blank
line that ends a head), whatever the request says. No parsing, no environ, no WSGI call, no
scoreboard. So its server CPU per request is the kernel's socket work plus the least Python an event loop
needs, and what flask_cluster spends above it is its HTTP/WSGI path. Keep-alive only (it never
closes a connection itself). From the repository root::

    python -m benchmarks.floor [--rounds 3] [--duration 4]

measures it, ``fc-round-robin`` and granian on the raw WSGI workload with benchmarks.run's
harness (same wrk load, best round each, server order reversed every other round) and prints
req/s and server CPU per request side by side.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
from typing import Any

from .apps import COUNTER_DIR_ENV, RequestCounter
from .run import Settings, bench_server
from .servers import HOST, PY, SERVERS, WORKERS, ServerSpec
from .workloads import WORKLOADS

FLOOR = ServerSpec("floor", f"main + {WORKERS} processes, epoll, a fixed answer, no HTTP",
                   lambda _target, port: [PY, "-m", "benchmarks.floor", "--serve", port],
                   multiprocess=True)

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"Hello, World!")


def serve(listener: socket.socket, counter: RequestCounter) -> None:
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
            requests = data.count(b"\r\n\r\n")
            for _ in range(requests):
                counter.hit()
            conn.send(RESPONSE * requests)  # a few hundred bytes: the kernel takes them whole


def run_floor(port: int) -> None:
    listener = socket.create_server((HOST, port), backlog=2048)
    listener.setblocking(False)
    counter = RequestCounter(os.environ.get(COUNTER_DIR_ENV))
    children = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serve(listener, counter)
        children.append(pid)

    def stop(_signum: int, _frame: Any) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        os.waitpid(pid, 0)



def compare(rounds: int, seconds: float) -> None:
    specs = [FLOOR, SERVERS["fc-round-robin"], SERVERS["granian"]]
    settings = Settings(seconds=seconds, warmup=1.0, tool="wrk", rounds=rounds)
    results: dict[str, Any] = {"servers": {}, "runs": [], "problems": []}
    for round_ in range(1, rounds + 1):
        for spec in specs if round_ % 2 else specs[::-1]:
            bench_server(spec, [WORKLOADS["raw"]], settings, round_, results)
    print("| server | req/s (best round) | server CPU us/request (that round) |")
    print("|---|---:|---:|")
    for spec in specs:
        runs = [run for run in results["runs"] if run["server"] == spec.name]
        if not runs:
            print(f"| `{spec.name}` | failed | |")
            continue
        best = max(runs, key=lambda run: run["load"]["rps"])
        print(f"| `{spec.name}` | {best['load']['rps']:.0f} | "
              f"{best['cpu']['server_us_per_request']} |")
    for problem in results["problems"]:
        print("problem:", problem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, metavar="PORT", help="be the floor server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    if args.serve is not None:
        run_floor(args.serve)
    else:
        compare(args.rounds, args.duration)


if __name__ == "__main__":
    main()
