"""Streamed views for ``benchmarks.streaming``: a stamped first chunk, and server-sent events."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/first")
def first() -> Response:
    """The first chunk carries ``time.time()`` taken just before it is yielded; the second
    comes ``then`` seconds later, so a server that holds the first chunk shows it."""
    then = float(request.args.get("then", "0.2"))

    def generate() -> Iterator[str]:
        yield f"{time.time()!r}\n"
        time.sleep(then)
        yield "end\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/events")
def events() -> Response:
    """``count`` server-sent events one second apart, each stamped as it is yielded."""
    count = int(request.args.get("count", "5"))

    def generate() -> Iterator[str]:
        for number in range(count):
            if number:
                time.sleep(1.0)
            yield f"data: {time.time()!r}\n\n"

    return Response(generate(), mimetype="text/event-stream")
