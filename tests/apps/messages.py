"""An app whose handlers record what they receive, so tests can check broadcast and gather."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from flask import Flask, jsonify, request

from flask_cluster import FlaskCluster, GatherIncomplete, MessageError

cluster = FlaskCluster()
numbers: list[int] = []
ordered: list[list[Any]] = []
seen = {"fail": 0, "flood": 0}


@cluster.on("number")
def record_number(number: int) -> None:
    numbers.append(number)


@cluster.on("order")
def record_order(item: list[Any]) -> None:
    ordered.append(item)


@cluster.on("fail")
def explode(data: Any) -> None:
    raise ValueError(f"handler-boom-marker {data}")


@cluster.on("fail")
def after_explode(_data: Any) -> None:
    seen["fail"] += 1


@cluster.on("flood")
def count_flood(_data: Any) -> None:
    seen["flood"] += 1


@cluster.on("pid")
def pid(_data: Any) -> int:
    return os.getpid()


@cluster.on("state")
def state(_data: Any) -> dict[str, Any]:
    return {"worker_id": cluster.worker_id, "pid": os.getpid(), "numbers": numbers,
            "ordered": ordered, "fail": seen["fail"], "flood": seen["flood"]}


def _incomplete(exc: GatherIncomplete) -> Any:
    return jsonify(error="GatherIncomplete", replies={str(k): v for k, v in exc.replies.items()},
                   missing=exc.missing, errors={str(k): v for k, v in exc.errors.items()},
                   missing_hosts=exc.missing_hosts), 504


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

    @app.get("/worker")
    def worker() -> Any:
        return jsonify(pid=os.getpid(), worker_id=cluster.worker_id,
                       worker_count=cluster.worker_count, is_worker=cluster.is_worker)

    @app.post("/broadcast/number")
    def broadcast_numbers() -> Any:
        count = int(request.args["n"])
        for number in range(count):
            cluster.broadcast("number", number)
        return jsonify(sent=count, pid=os.getpid())

    @app.post("/broadcast/order")
    def broadcast_order() -> Any:
        tag, count = request.args["tag"], int(request.args["n"])
        start = int(request.args.get("from", "0"))
        for index in range(start, start + count):
            cluster.broadcast("order", [tag, index])
        return jsonify(sent=count, pid=os.getpid())

    @app.post("/broadcast/fail")
    def broadcast_fail() -> Any:
        cluster.broadcast("fail", "payload")
        return jsonify(sent=1)

    @app.post("/flood")
    def flood() -> Any:
        count = int(request.args["n"])
        started = time.monotonic()
        for index in range(count):
            cluster.broadcast("flood", index)
        return jsonify(sent=count, seconds=time.monotonic() - started, pid=os.getpid())

    @app.get("/state")
    def all_state() -> Any:
        try:
            return jsonify(workers=cluster.gather("state", timeout=5.0))
        except GatherIncomplete as exc:
            return _incomplete(exc)

    @app.get("/gather/<topic>")
    def gather(topic: str) -> Any:
        timeout = float(request.args.get("timeout", "2.0"))
        try:
            return jsonify(replies=cluster.gather(topic, timeout=timeout), asker=os.getpid())
        except GatherIncomplete as exc:
            return _incomplete(exc)

    @app.get("/sleep/<seconds>")
    def sleep(seconds: str) -> Any:
        print(f"sleep-start worker {cluster.worker_id} pid {os.getpid()}",
              file=sys.stderr, flush=True)
        time.sleep(float(seconds))
        return jsonify(pid=os.getpid(), worker_id=cluster.worker_id)

    @app.get("/unpicklable/<how>")
    def unpicklable(how: str) -> Any:
        try:
            if how == "gather":
                cluster.gather("pid", lambda: 1)
            elif how == "too-big":
                cluster.broadcast("number", b"x" * (2 * 1024 * 1024))
            else:
                cluster.broadcast("number", lambda: 1)
        except MessageError as exc:
            return jsonify(error=type(exc).__name__, reason=str(exc)), 400
        return jsonify(error=None)

    return app
