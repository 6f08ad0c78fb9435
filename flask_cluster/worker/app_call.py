"""What both ways of running the app share (inline on the loop, or on a pool thread): the end of
a request, the 500 for an app that failed, closing the app's iterable, and the ``sendfile``
shortcut for a ``wsgi.file_wrapper``."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..http.parser import Request
from ..http.wsgi import FileWrapper, Response, WSGIApp, error_response
from .access_log import AccessLog
from .connection import Connection

log = logging.getLogger("flask_cluster.worker")
# --metrics (request_metrics.py): the request answered, with the monotonic time it was read.
Record = Callable[[float, dict[str, Any], Response], None]


class AppHost(Protocol):
    """What an exchange needs of the engine."""

    app: WSGIApp
    access_log: AccessLog | None
    record: Record | None  # --metrics
    sendfile: bool  # os.sendfile may be used (not under TLS, which it would bypass)

    def on_request(self, delta: int) -> None:
        """+1 when a request starts, -1 when it ends."""


def finish(host: AppHost, conn: Connection, response: Response, request: Request,
           environ: dict[str, Any]) -> None:
    """The request is answered (on the loop thread): count it, free its body, log it."""
    host.on_request(-1)
    request.body.close()  # a body past the spool threshold is a temporary file: free it now
    conn.http.response_done(response.keep_alive and request.keep_alive)
    if host.record is not None:
        host.record(conn.answering_since, environ, response)
    if host.access_log is not None:
        host.access_log.write(environ, response)


def app_failed(response: Response, environ: dict[str, Any], push: Callable[[bytes], None]) -> None:
    """The app raised: a 500 if no header went out yet, else the connection closes after it."""
    log.exception("error handling %s %s", environ.get("REQUEST_METHOD"), environ.get("RAW_URI"))
    if response.headers_sent:
        response.keep_alive = False  # the client has part of a response: only a close is honest
        return
    response.status = "500 Internal Server Error"
    response.status_code = 500
    response.headers_sent = True
    push(error_response(500, "Internal Server Error", keep_alive=response.keep_alive))


def close_iterable(app_iter: Iterable[bytes]) -> None:
    close = getattr(app_iter, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("error closing the response iterable")


def file_to_send(response: Response, app_iter: Iterable[bytes]) -> tuple[int, int, int] | None:
    """For a ``wsgi.file_wrapper`` around a regular file: send the headers now and return
    ``(fd, offset, count)`` for ``os.sendfile``; ``None`` to iterate the body instead. For HEAD
    the count is 0: the length a GET would get is announced, and nothing is read."""
    if type(app_iter) is not FileWrapper:
        return None
    fileno = getattr(app_iter.filelike, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
        info = os.fstat(fd)
        offset = app_iter.filelike.tell() if hasattr(app_iter.filelike, "tell") else 0
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    count = max(0, info.st_size - offset)
    declared = response.declared_length()
    if declared is not None:
        count = min(count, declared)
    response.send_headers(count)
    if response.head:
        return fd, offset, 0
    response.body_bytes = count
    return fd, offset, count
