"""Template of an app whose source the tests rewrite on disk, then reload.

The tests copy this file into a temporary directory and replace ``MESSAGE``'s text (and, for
the broken-reload test, the whole file) before asking the cluster to reload.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify

from flask_cluster import FlaskCluster

MESSAGE = "message one"

cluster = FlaskCluster()


def create_app() -> Flask:
    app = Flask(__name__)
    cluster.init_app(app)

    @app.get("/message")
    def message() -> Any:
        return jsonify(message=MESSAGE, pid=os.getpid(), worker_id=cluster.worker_id)

    return app
