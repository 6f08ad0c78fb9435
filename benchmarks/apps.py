"""The apps every server in the benchmark runs: the same code, the same routes.

Both exported apps are wrapped in :func:`instrument`, a WSGI middleware that costs well under a
microsecond per request and does two things the harness needs:

* it counts the requests each process serves in an 8-byte memory-mapped file
  ``$BENCH_COUNTER_DIR/<pid>``, which the harness reads directly (no HTTP round trip, so it sees
  every worker, whichever balance mode is in use): that is the per-worker share (fairness);
* it echoes an ``X-Bench-Id`` request header back as a response header, so the wrk script of the
  mixed workload can match each response to the request it sent (see ``wrk/mixed.lua``).
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
COUNTER_DIR_ENV = "BENCH_COUNTER_DIR"


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

    @app.get("/cpu7")
    def cpu7() -> str:  # the slow route of benchmarks.mixed_load
        burn_cpu(0.007)
        return "done"

    @app.get("/slow")
    def slow() -> str:
        burn_cpu(0.020)
        return "done"

    return app


def raw_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class RequestCounter:
    """This process's request count in ``<dir>/<pid>``; the file is opened on first use, so a
    forked worker gets its own (the at-fork hook forgets the parent's mapping)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.words: memoryview | None = None
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        self.words = None

    def hit(self) -> None:
        words = self.words
        if words is None:
            if self.directory is None:
                return
            words = self.words = self._open()
        words[0] += 1

    def _open(self) -> memoryview:
        assert self.directory is not None
        path = os.path.join(self.directory, str(os.getpid()))
        with open(path, "w+b") as file:
            file.write(bytes(8))
            file.flush()
            mapping = mmap.mmap(file.fileno(), 8)
        return memoryview(mapping).cast("q")


def instrument(app: WSGIApp, counter: RequestCounter) -> WSGIApp:
    def instrumented(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        counter.hit()
        bench_id = environ.get("HTTP_X_BENCH_ID")
        if bench_id is None:
            return app(environ, start_response)

        def echo(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Bench-Id", bench_id)], exc_info)

        return app(environ, echo)

    return instrumented


counter = RequestCounter(os.environ.get(COUNTER_DIR_ENV))

app = create_app()
app.wsgi_app = instrument(app.wsgi_app, counter)  # type: ignore[method-assign, assignment]

raw_app = Flask(__name__)
"""``raw_wsgi`` in a Flask shell: ``flask --app`` (so ``flask cluster-run``) only loads Flask
objects, and ``Flask.__call__`` is one plain call to ``wsgi_app``, so no Flask code runs."""
raw_app.wsgi_app = instrument(raw_wsgi, counter)  # type: ignore[method-assign, assignment]
