"""The app behind ``benchmarks/broadcast.py``: every measurement runs inside one view."""

from __future__ import annotations

import statistics
import time

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_cluster import FlaskCluster

cluster = FlaskCluster()
received = {"count": 0}
latencies: list[float] = []


@cluster.on("ping")
def ping(_data: None) -> int:
    return 1


@cluster.on("count")
def count(_data: int) -> None:
    received["count"] += 1


@cluster.on("received")
def how_many(_data: None) -> int:
    return received["count"]


@cluster.on("stamp")
def stamp(sent: float) -> None:
    latencies.append(time.time() - sent)  # one clock: every "host" runs on this machine


@cluster.on("latencies")
def latencies_so_far(_data: None) -> list[float]:
    return latencies


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["CLUSTER_BROKER_SECRET"] = "benchmark"  # used with --broker only
    cluster.init_app(app)

    @app.get("/workers")
    def workers() -> ResponseReturnValue:
        """Every worker a gather reaches: with --broker, those of every host."""
        return jsonify(workers=len(cluster.gather("ping", timeout=5.0)))

    @app.get("/latency")
    def latency() -> ResponseReturnValue:
        """From ``broadcast()`` to a handler starting in every other worker, paced so nothing
        queues: n broadcasts, ``gap_ms`` apart."""
        messages = int(request.args.get("n", "1000"))
        gap = float(request.args.get("gap_ms", "2")) / 1000
        receivers = len(cluster.gather("latencies", timeout=5.0)) - 1
        for _ in range(messages):
            cluster.broadcast("stamp", time.time(), include_self=False)
            time.sleep(gap)
        deadline = time.perf_counter() + 60
        while True:
            samples = sorted(value for replies in cluster.gather("latencies", timeout=5.0)
                             for value in replies)
            if len(samples) >= messages * receivers:
                break
            if time.perf_counter() > deadline:
                return jsonify(error="not every message arrived within 60 s"), 500
        return jsonify(receivers=receivers, p50_ms=statistics.median(samples) * 1000,
                       p99_ms=samples[int(len(samples) * 0.99) - 1] * 1000)

    @app.get("/round-trip")
    def round_trip() -> ResponseReturnValue:
        """A gather reaches every worker, runs its handler and comes back: one round trip."""
        rounds = int(request.args.get("n", "1000"))
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            replies = cluster.gather("ping", timeout=5.0)
            samples.append(time.perf_counter() - started)
            assert len(replies) == cluster.worker_count
        samples.sort()
        return jsonify(workers=cluster.worker_count, rounds=rounds,
                       p50_ms=statistics.median(samples) * 1000,
                       p99_ms=samples[int(len(samples) * 0.99) - 1] * 1000,
                       max_ms=samples[-1] * 1000)

    @app.get("/throughput")
    def throughput() -> ResponseReturnValue:
        """Broadcast n messages, then wait until every other worker's handler ran for all.

        The sender is left out: its own deliveries would only run after this view returns.
        """
        messages = int(request.args.get("n", "20000"))
        counts = cluster.gather("received", timeout=5.0)
        receivers = len(counts) - 1  # with --broker, the workers of every host
        before = sum(counts)
        started = time.perf_counter()
        for number in range(messages):
            cluster.broadcast("count", number, include_self=False)
        expected = before + messages * receivers
        deadline = started + 60
        while sum(cluster.gather("received", timeout=5.0)) < expected:
            if time.perf_counter() > deadline:
                return jsonify(error="not every message arrived within 60 s"), 500
        elapsed = time.perf_counter() - started
        return jsonify(workers=cluster.worker_count, messages=messages, seconds=elapsed,
                       deliveries_per_second=messages * receivers / elapsed,
                       broadcasts_per_second=messages / elapsed)

    return app
