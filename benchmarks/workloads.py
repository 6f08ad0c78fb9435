"""The workloads: what is requested, over which kind of connection, and which figure counts."""

from __future__ import annotations

from dataclasses import dataclass

APP = "benchmarks.apps:app"
RAW_APP = "benchmarks.apps:raw_app"
CONNECTIONS = 32
SLOW_EVERY = 50  # mixed workloads: one request in this many goes to /slow


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    target: str  # the app the server runs
    path: str
    close: bool = False  # send "Connection: close": a new connection per request
    mixed: bool = False  # "/" with every SLOW_EVERY-th request to "/slow"; figure: fast p99
    about: str = ""


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("hello", "Flask hello world, keep-alive", APP, "/",
             about=f"`GET /` returning 13 bytes over {CONNECTIONS} keep-alive connections."),
    Workload("hello-close", "Flask hello world, Connection: close", APP, "/", close=True,
             about="The same with `Connection: close`: one TCP connection (accept, hand-off) "
                   "per request."),
    Workload("cpu", "CPU-heavy route", APP, "/cpu",
             about="`GET /cpu` burns 5 ms of CPU: the server's own cost hardly matters, "
                   "spreading work evenly over the cores does."),
    Workload("mixed", "Mixed fast/slow, keep-alive", APP, "/", mixed=True,
             about=f"`GET /`, with every {SLOW_EVERY}th request `GET /slow` (20 ms CPU), over "
                   "keep-alive connections. The figure is the p99 latency of the fast requests: "
                   "how much slow requests hold up fast ones."),
    Workload("mixed-close", "Mixed fast/slow, Connection: close", APP, "/", close=True,
             mixed=True,
             about="The same mix with a new connection per request, so that the balancer "
                   "(least-busy versus the others) decides where every request goes."),
    Workload("raw", "Raw WSGI hello world (no Flask)", RAW_APP, "/",
             about="A plain WSGI callable: what is left is the server's own per-request cost."),
)}
