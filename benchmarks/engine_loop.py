"""One worker engine driven in this process over socket pairs, for :mod:`benchmarks.instructions`.

    python -S benchmarks/engine_loop.py {flask|raw} {keep-alive|close} REQUESTS [metrics]

Run with ``-S`` and ``PYTHONPATH=TREE:SITE_PACKAGES`` so that TREE's ``flask_cluster`` is the one
imported (an editable install's import hook would otherwise win). The client is a plain socket
in the same process: every request is a send, one pass of the engine's loop, and a read of the
whole response. Warm-up requests come first, so the measured ones find every cache filled.
With ``metrics``, each request is also recorded on a scoreboard as ``--metrics`` does.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

try:
    from flask_cluster.http.parser import Limits
    from flask_cluster.worker.engine import Engine
except ImportError:  # revisions before the master/worker/http layout (5546417 and earlier)
    from flask_cluster.engine import Engine  # type: ignore[no-redef]
    from flask_cluster.protocol import Limits  # type: ignore[no-redef]

WARM_UP = 200
HEAD = b"GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n"


def raw_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"Hello world!"]


def flask_hello() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.route("/")
    def hello() -> str:
        return "Hello world!"

    return app


def main() -> None:
    app_name, connection, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = flask_hello() if app_name == "flask" else raw_wsgi
    base = {"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "wsgi.url_scheme": "http",
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "SCRIPT_NAME": "", "wsgi.version": (1, 0), "wsgi.errors": sys.stderr}
    options: dict[str, Any] = {}
    if sys.argv[4:] == ["metrics"]:  # the working tree only: older revisions have no recorder
        from flask_cluster.scoreboard import Scoreboard
        from flask_cluster.worker.request_metrics import request_metrics

        options["record"] = request_metrics(Scoreboard(64), 0).record
    engine = Engine(app, threads=1, keep_alive=60, limits=Limits(), base_environ=base,
                    access_log=None, on_request=lambda delta: None, **options)
    peer = ("127.0.0.1", "5555")

    if connection == "close":
        request = HEAD + b"Connection: close\r\n\r\n"

        def once() -> None:
            client, server = socket.socketpair()
            client.sendall(request)
            engine.add_connection(server, peer)
            while client.recv(1 << 16):
                engine.run_once(0)
            client.close()
    else:
        request = HEAD + b"\r\n"
        client, server = socket.socketpair()
        engine.add_connection(server, peer)

        def once() -> None:
            client.sendall(request)
            engine.run_once(1.0)
            if not client.recv(1 << 16).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("no 200 response")

    for _ in range(WARM_UP + count):
        once()


if __name__ == "__main__":
    main()
