"""Streamed responses on a 2-worker cluster: time to first byte, and server-sent-event clients.

Run from the repository root::

    python -m benchmarks.streaming                 # the working tree
    python -m benchmarks.streaming --before REV    # and REV, for the time to first byte
    python -m benchmarks.streaming --sse-only --balance least-busy

Time to first byte: ``/first`` stamps ``time.time()`` into its first chunk just before yielding
it and yields the second 0.2 s later; the gap is the client's ``time.time()`` when the stamp
arrives minus the stamp (same machine, same clock).

Server-sent events: N clients at once each ask for 5 events one second apart. A client is
*on time* when its first event came within 1 s of its request and all 5 within 6 s; the table
also gives how long events took from ``yield`` to the client (p50, p99). Loopback only; every
cluster is stopped (its whole process group) before the next starts.
"""

from __future__ import annotations

import argparse
import re
import selectors
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .before_after import ROOT, cluster, worktree
from .servers import HOST

APP = "benchmarks.streaming_app:app"
STAMP = re.compile(rb"\r\n\r\n[0-9a-fA-F]+\r\n([\d.]+)\n")
EVENT = re.compile(rb"data: ([\d.]+)\n\n")
EVENTS = 5


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


def first_byte_gaps(port: int, requests: int) -> list[float]:
    gaps = []
    for _ in range(requests):
        with socket.create_connection((HOST, port), timeout=10) as sock:
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: bench\r\n\r\n")
            data = b""
            while (match := STAMP.search(data)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"closed before the first chunk: {data!r}")
                data += chunk
            gaps.append(time.time() - float(match[1]))
            while not data.endswith(b"0\r\n\r\n"):  # the whole response, so workers are free
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    return gaps


@dataclass
class Client:
    sock: socket.socket
    sent_at: float = 0.0
    buffer: bytes = b""
    scanned: int = 0
    events: list[tuple[float, float]] = field(default_factory=list)  # (received, stamped)


def sse_clients(port: int, count: int) -> dict[str, float]:
    selector = selectors.DefaultSelector()
    clients = []
    request = f"GET /events?count={EVENTS} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((HOST, port))
        client = Client(sock)
        clients.append(client)
        selector.register(sock, selectors.EVENT_WRITE, client)
    deadline = time.time() + EVENTS + 3
    while time.time() < deadline:
        for key, mask in selector.select(0.1):
            client = key.data
            if mask & selectors.EVENT_WRITE:
                client.sock.send(request)
                client.sent_at = time.time()
                selector.modify(client.sock, selectors.EVENT_READ, client)
                continue
            try:
                data = client.sock.recv(65536)
            except OSError:
                data = b""
            now = time.time()
            if not data:
                selector.unregister(client.sock)
                continue
            client.buffer += data
            for match in EVENT.finditer(client.buffer, client.scanned):
                client.events.append((now, float(match[1])))
                client.scanned = match.end()
    for client in clients:
        client.sock.close()
    selector.close()
    delays = sorted(received - stamped for c in clients for received, stamped in c.events)
    on_time = sum(1 for c in clients if len(c.events) == EVENTS and c.sent_at
                  and c.events[0][0] - c.sent_at <= 1.0 and c.events[-1][0] - c.sent_at <= EVENTS + 1)
    return {
        "clients": count,
        "on_time": on_time,
        "events": len(delays) / (count * EVENTS),
        "p50_ms": 1000 * statistics.median(delays) if delays else float("nan"),
        "p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))] if delays else float("nan"),
    }


def report_first_byte(label: str, tree: Path, requests: int) -> None:
    for threads in ("1", "4"):
        with cluster(APP, tree, "--threads", threads) as url:
            gaps = sorted(first_byte_gaps(port_of(url), requests))
        print(f"| {label} | {threads} | {requests} | {1000 * statistics.median(gaps):.2f} "
              f"| {1000 * gaps[-1]:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="an earlier revision to measure the first byte on too")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", default="10,50,100,200")
    parser.add_argument("--balance", default="round-robin")
    parser.add_argument("--sse-only", action="store_true", help="skip the time to first byte")
    args = parser.parse_args()
    if not args.sse_only:
        print("time to first byte: from the yield of the first chunk to the client, in ms\n")
        print("| code | --threads | requests | median | max |\n|---|---:|---:|---:|---:|")
        if args.before:
            with worktree(args.before) as earlier:
                report_first_byte(args.before, earlier, args.requests)
        report_first_byte("working tree", ROOT, args.requests)
    print(f"\nserver-sent events: N clients at once, {EVENTS} events 1 s apart each, "
          f"--balance {args.balance}\n")
    print("| --threads | clients | on time | events received | delay p50 ms | delay p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads in ("1", "64"):
        for count in map(int, args.clients.split(",")):
            with cluster(APP, ROOT, "--threads", threads, "--balance", args.balance) as url:
                row = sse_clients(port_of(url), count)
            print(f"| {threads} | {count} | {row['on_time']} | {row['events']:.0%} "
                  f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
