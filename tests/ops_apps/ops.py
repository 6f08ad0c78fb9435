"""One app for the operations tests: who served me, a view that never returns, one that kills
its worker, one that holds memory, and a broadcast handler that records what it received."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from flask import Flask, jsonify

from flask_cluster import FlaskCluster

cluster = FlaskCluster()
notes: list[Any] = []  # what the "note" broadcasts brought to this worker
hoard: list[bytes] = []  # memory /hog keeps alive
held_files: list[int] = []  # descriptors /hold-files keeps open


@cluster.on("note")
def record_note(data: Any) -> None:
    notes.append(data)


def identity() -> dict[str, Any]:
    return {"pid": os.getpid(), "worker_id": cluster.worker_id}


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

    @app.get("/worker")
    def worker() -> Any:
        return jsonify(identity())

    @app.get("/spin")
    def spin() -> Any:
        # A request that never ends, as an accidental infinite loop would. The line tells the
        # test which worker is stuck.
        print(f"spin-start worker {cluster.worker_id} pid {os.getpid()}", file=sys.stderr,
              flush=True)
        while True:
            pass

    @app.get("/crash")
    def crash() -> Any:
        # Worker 0 dies on every request here; the others answer, so someone keeps serving.
        if cluster.worker_id == 0:
            os._exit(1)
        return jsonify({**identity(), "crashed": False})

    @app.get("/hog/<int:mib>")
    def hog(mib: int) -> Any:
        hoard.append(b"\x01" * (mib << 20))  # written, so resident, and kept until exit
        return jsonify({**identity(), "held_mib": sum(len(b) for b in hoard) >> 20})

    @app.get("/hold-files/<int:count>")
    def hold_files(count: int) -> Any:
        held_files.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(count))
        return jsonify({**identity(), "held_files": len(held_files)})

    @app.get("/notes")
    def show_notes() -> Any:
        return jsonify({**identity(), "notes": notes})

    @app.get("/sleep/<seconds>")
    def sleep(seconds: str) -> Any:
        time.sleep(float(seconds))
        return jsonify(identity())

    return app
