"""The messages app with a broker key: ``BROKER_TEST_SECRET`` from the environment (so a test can
give two clusters different keys), else a fixed one."""

from __future__ import annotations

import os

from flask import Flask

from tests.apps.messages import create_app as create_messages_app


def create_app() -> Flask:
    app = create_messages_app()
    app.config["CLUSTER_BROKER_SECRET"] = os.environ.get("BROKER_TEST_SECRET", "test-broker-secret")
    return app
