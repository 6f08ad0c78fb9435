"""Streamed responses whose generator waits for the test: the test reads the first chunk while
the generator is still blocked, then opens the gate."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from flask import Flask, Response, request, stream_with_context

GATE_TIMEOUT = 20.0  # a generator whose test died gives up and ends the stream


def wait_for_gate(path: str) -> bool:
    """Until the test creates ``path``: a bounded wait for a condition the test controls."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/events")
    def events() -> Response:
        gate = request.args["gate"]

        @stream_with_context
        def generate() -> Iterator[str]:
            yield "data: first\n\n"
            opened = wait_for_gate(gate)
            yield "data: second\n\n" if opened else "data: gate-timeout\n\n"

        return Response(generate(), mimetype="text/event-stream")

    @app.get("/fails-midway")
    def fails_midway() -> Response:
        def generate() -> Iterator[str]:
            yield "data: first\n\n"
            raise RuntimeError("stream broke after its first chunk")

        return Response(generate(), mimetype="text/event-stream")

    return app
