"""The app most integration tests run: who am I, slow and failing views, lifecycle hooks."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from flask import Flask, jsonify

from flask_cluster import FlaskCluster

cluster = FlaskCluster()
rendezvous = threading.Barrier(4, timeout=10)


def _hook_log(event: str) -> None:
    """Append ``event worker_id pid`` to the file named by HOOK_LOG, if the test set one."""
    path = os.environ.get("HOOK_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{event} {cluster.worker_id} {os.getpid()}\n")


@cluster.on_worker_start
def started() -> None:
    _hook_log("start")


@cluster.on_worker_stop
def stopped() -> None:
    _hook_log("stop")


def identity() -> dict[str, Any]:
    return {"pid": os.getpid(), "worker_id": cluster.worker_id,
            "worker_count": cluster.worker_count, "is_worker": cluster.is_worker}


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/worker")
    def worker() -> Any:
        return jsonify(identity())

    @app.get("/sleep/<seconds>")
    def sleep(seconds: str) -> Any:
        # The tests wait for this line to know the request is in flight, and in which worker.
        print(f"sleep-start worker {cluster.worker_id} pid {os.getpid()}",
              file=sys.stderr, flush=True)
        time.sleep(float(seconds))
        return jsonify({**identity(), "slept": float(seconds)})

    @app.get("/rendezvous")
    def meet() -> Any:
        # Answers only when four requests are inside this view at the same time.
        rendezvous.wait()
        return jsonify({**identity(), "thread": threading.get_ident()})

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("boom-marker: secret detail that must not reach the client")

    return app
