"""What a view sees of the request, plus streaming views for large bodies in both directions.

``/upload`` streams ``wsgi.input`` to a file in the directory named by ``UPLOAD_DIR`` in chunks,
so the view itself never holds the body; the test compares the worker's memory before and after.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

CHUNK = 1024 * 1024
PATTERN = bytes(range(256)) * 4096  # 1 MiB; a response of n bytes is PATTERN repeated, cut at n


def pattern(size: int) -> Iterator[bytes]:
    """``size`` bytes of :data:`PATTERN`, in 1 MiB chunks (the client recomputes them)."""
    while size > 0:
        piece = PATTERN[:min(size, len(PATTERN))]
        size -= len(piece)
        yield piece


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    @app.route("/info", methods=["GET", "POST"])
    def info() -> Any:
        return jsonify({
            "pid": os.getpid(),
            "method": request.method,
            "path": request.full_path.rstrip("?"),
            "host": request.host,
            "remote_addr": request.remote_addr,
            "scheme": request.scheme,
            "url_scheme": request.environ["wsgi.url_scheme"],
            "url": request.url,
            "forwarded_for": request.headers.get("X-Forwarded-For"),
            "proxy_addr": request.environ.get("flask_cluster.proxy_addr"),
        })

    @app.post("/digest")
    def digest() -> Any:
        """Size and sha256 of the request body, read in chunks."""
        stream = request.environ["wsgi.input"]
        hasher = hashlib.sha256()
        size = 0
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        return jsonify({"size": size, "sha256": hasher.hexdigest(), "pid": os.getpid()})

    @app.post("/upload")
    def upload() -> Any:
        """Stream the body to ``$UPLOAD_DIR/upload.bin``; report its size and sha256."""
        stream = request.environ["wsgi.input"]
        path = os.path.join(os.environ["UPLOAD_DIR"], "upload.bin")
        hasher = hashlib.sha256()
        size = 0
        with open(path, "wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
        return jsonify({"size": size, "sha256": hasher.hexdigest(), "file_size": os.path.getsize(path),
                        "pid": os.getpid()})

    @app.post("/exit")
    def exit_worker() -> Any:
        """A view that kills its worker, once per call: ``$CRASH_LOG`` gets one line per call,
        so a request replayed on another worker after the crash would show as two lines."""
        with open(os.environ["CRASH_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
        os._exit(3)

    @app.get("/bytes/<int:size>")
    def payload(size: int) -> Response:
        return Response(pattern(size), mimetype="application/octet-stream",
                        headers={"Content-Length": str(size)})

    return app
