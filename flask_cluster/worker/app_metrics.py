"""The worker's side of app metrics: the app's ``prometheus_client`` metrics go to files.

The master sets ``PROMETHEUS_MULTIPROC_DIR`` before it forks (master/app_metrics.py), and
``prometheus_client`` reads it when it is imported: a copy imported before the variable was set
(by the master, or by anything imported before it) keeps its in-memory values, which the master
cannot see. Choosing again here, before the app is loaded and creates its metrics, makes them
file-backed whatever was imported first.
"""

from __future__ import annotations

import sys
from typing import Any


def use_multiprocess_values() -> None:
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()
