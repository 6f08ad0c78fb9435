"""The access log: one line per request, in the common log format by default."""

from __future__ import annotations

import logging
import time
from typing import Any

from .wsgi import Response

COMMON_FORMAT = '{remote} - - [{time}] "{method} {uri} {protocol}" {status} {size}'
logger = logging.getLogger("flask_cluster.access")


class AccessLog:
    def __init__(self, fmt: str = COMMON_FORMAT) -> None:
        self.fmt = fmt

    def write(self, environ: dict[str, Any], response: Response) -> None:
        logger.info(self.fmt.format(
            remote=environ.get("REMOTE_ADDR") or "-",
            time=time.strftime("%d/%b/%Y:%H:%M:%S %z"),
            method=environ.get("REQUEST_METHOD", "-"),
            uri=environ.get("RAW_URI", "-"),
            protocol=environ.get("SERVER_PROTOCOL", "-"),
            status=response.status_code or "-",
            size=response.body_bytes or "-",
        ))
