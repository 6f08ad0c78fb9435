"""The apps every server in the benchmark runs: the same code, the same routes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask


def burn_cpu(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    @app.get("/cpu")
    def cpu() -> str:
        burn_cpu(0.005)
        return "done"

    @app.get("/slow")
    def slow() -> str:
        burn_cpu(0.020)
        return "done"

    return app


app = create_app()


def raw_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
