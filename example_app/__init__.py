"""A small app that shows what flask_cluster adds: worker ids, broadcast and gather.

Run it on every core with ``flask --app example_app cluster-run``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from flask import Flask, jsonify, request

from flask_cluster import FlaskCluster, GatherIncomplete

cluster = FlaskCluster()
cache: dict[str, Any] = {}
served: Counter[str] = Counter()


@cluster.on("cache-clear")
def clear_cache(data: dict[str, str]) -> None:
    cache.pop(data["key"], None)


@cluster.on("stats")
def stats(_data: None) -> dict[str, Any]:
    return {"worker": cluster.worker_id, "pid": os.getpid(), "served": sum(served.values())}


def burn_cpu(seconds: float) -> int:
    """A busy loop, like the CPU-heavy route of the Node.js cluster example."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        count += 1
    return count


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

    @app.before_request
    def count() -> None:
        served[request.endpoint or "?"] += 1

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/worker")
    def worker() -> Any:
        return jsonify(pid=os.getpid(), worker_id=cluster.worker_id,
                       worker_count=cluster.worker_count)

    @app.get("/cpu")
    def cpu() -> Any:
        return jsonify(pid=os.getpid(), iterations=burn_cpu(0.005))

    @app.get("/cache/<key>")
    def read_cache(key: str) -> Any:
        value = cache.setdefault(key, f"computed by worker {cluster.worker_id} at {time.time():.3f}")
        return jsonify(key=key, value=value, worker_id=cluster.worker_id)

    @app.post("/cache/<key>/clear")
    def clear(key: str) -> Any:
        cluster.broadcast("cache-clear", {"key": key})
        return jsonify(cleared=key)

    @app.get("/stats")
    def all_stats() -> Any:
        try:
            return jsonify(workers=cluster.gather("stats", timeout=1.0))
        except GatherIncomplete as exc:
            return jsonify(workers=list(exc.replies.values()), missing=exc.missing), 503

    return app
