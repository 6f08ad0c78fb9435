"""An app that counts its requests in a prometheus_client Counter, as a user's app would: no
multiprocess set-up of its own. ``/slow?seconds=S`` holds its worker that long."""

from __future__ import annotations

import os
import time

from flask import Flask, request
from prometheus_client import Counter, Gauge

app = Flask(__name__)
HITS = Counter("app_hits", "Requests the app answered.")
BUSY = Gauge("app_busy", "Slow requests in progress, per worker.", multiprocess_mode="livesum")


@app.route("/")
def hello() -> str:
    HITS.inc()
    return f"hello from {os.getpid()}"


@app.route("/slow")
def slow() -> str:
    HITS.inc()
    with BUSY.track_inprogress():
        time.sleep(float(request.args.get("seconds", "5")))
    return "slow"
