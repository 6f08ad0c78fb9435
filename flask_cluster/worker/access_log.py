"""The access log: one line per request, written by a background thread.

The loop only formats the line and puts it on a queue; a slow terminal or a full pipe on stderr
stalls the writer thread, never the requests.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import Any

from ..http.wsgi import Response
from ..logs import STRUCTURED, formatter

COMMON_FORMAT = '{remote} - - [{time}] "{method} {uri} {protocol}" {status} {size}'
STARTED = "flask_cluster.started"  # environ key: perf_counter() when the request was taken up
FIELDS = ("remote", "time", "method", "uri", "protocol", "status", "size", "duration_ms",
          "user_agent", "referer", "pid")


class AccessLogFormatError(ValueError):
    """The format names a field that does not exist."""


def check_format(fmt: str) -> None:
    sample = dict.fromkeys(FIELDS, "-")
    try:
        fmt.format(**sample)
    except (KeyError, IndexError, ValueError) as exc:
        raise AccessLogFormatError(f"unknown field {exc} in the access log format; fields: "
                                   f"{', '.join(FIELDS)}") from None


class AccessLog:
    """``log_format`` ``json``: each line is a JSON object with every field besides the line."""

    def __init__(self, fmt: str = COMMON_FORMAT, log_format: str = "text") -> None:
        check_format(fmt)
        self.fmt = fmt
        self.structured = log_format == "json"
        self.pid = os.getpid()
        self.logger = logging.getLogger("flask_cluster.access")
        self.logger.setLevel(logging.INFO)
        self.listener: logging.handlers.QueueListener | None = None
        # The app's own handlers for this logger (from its logging config) are kept and get the
        # records through the queue; without any, lines go to stderr.
        self._replaced = (self.logger.handlers, self.logger.propagate)  # put back by close()
        outputs = self.logger.handlers or [_stderr_handler(log_format)]
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.logger.handlers = [logging.handlers.QueueHandler(records)]
        self.logger.propagate = False
        self.listener = logging.handlers.QueueListener(records, *outputs,
                                                       respect_handler_level=True)
        self.listener.start()
        atexit.register(self.close)

    def write(self, environ: dict[str, Any], response: Response) -> None:
        started = environ.get(STARTED)
        fields = {
            "remote": environ.get("REMOTE_ADDR") or "-",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S %z"),
            "method": environ.get("REQUEST_METHOD", "-"),
            "uri": environ.get("RAW_URI", "-"),
            "protocol": environ.get("SERVER_PROTOCOL", "-"),
            "status": response.status_code or "-",
            "size": response.body_bytes or "-",
            "duration_ms": f"{(time.perf_counter() - started) * 1000:.1f}" if started else "-",
            "user_agent": environ.get("HTTP_USER_AGENT", "-"),
            "referer": environ.get("HTTP_REFERER", "-"),
            "pid": self.pid,
        }
        if self.structured:
            self.logger.info(self.fmt.format(**fields), extra={STRUCTURED: fields})
        else:
            self.logger.info(self.fmt.format(**fields))

    def close(self) -> None:
        """Write what is queued and stop the writer thread (safe to call twice)."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
            # Hand the logger back as we found it: another AccessLog in this process (a second
            # engine, a test) must not take our stopped queue for its output.
            self.logger.handlers, self.logger.propagate = self._replaced


def _stderr_handler(log_format: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format, "%(message)s"))
    return handler
