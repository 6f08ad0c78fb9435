"""One log format for every line the cluster writes: the master's, the workers', the startup
line and (``--access-log``) the access log. ``text`` for people, ``json`` (one object a line)
for log shippers. Configured once in the master before the first fork; workers inherit it."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
STRUCTURED = "fields"  # a record's structured fields (``extra={"fields": {...}}``), shown in JSON


class JSONFormatter(logging.Formatter):
    """``{"time", "level", "logger", "pid", "message"}``, a record's fields, and its exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, STRUCTURED, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str, text: str = TEXT_FORMAT) -> logging.Formatter:
    return JSONFormatter() if log_format == "json" else logging.Formatter(text)


def configure(level: str, log_format: str) -> None:
    """Log to stderr in ``log_format`` at ``level``, unless the app's environment set up logging
    already (then its handlers are kept, and only the level of our loggers is set)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
        root.setLevel(level.upper())
    logging.getLogger("flask_cluster").setLevel(level.upper())
