"""The app behind ``benchmarks/broadcast.py``: every measurement runs inside one view."""

from __future__ import annotations

import statistics
import time

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_cluster import FlaskCluster

cluster = FlaskCluster()
received = {"count": 0}


@cluster.on("ping")
def ping(_data: None) -> int:
    return 1


@cluster.on("count")
def count(_data: int) -> None:
    received["count"] += 1


@cluster.on("received")
def how_many(_data: None) -> int:
    return received["count"]


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

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
        receivers = cluster.worker_count - 1
        before = sum(cluster.gather("received", timeout=5.0))
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
