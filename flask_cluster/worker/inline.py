"""The app on the loop thread (``--threads 1``): called between reads and writes, its body
produced as fast as the client takes it and resumed when the client drains."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..http.parser import Request
from ..http.wsgi import Response
from .app_call import AppHost, app_failed, close_iterable, file_to_send, finish
from .connection import HIGH_WATER, Connection


def start_inline(host: AppHost, conn: Connection, request: Request, environ: dict[str, Any]) -> None:
    """Call the app and send what it gives while the socket takes it."""
    response = Response(conn.push, request)
    try:
        app_iter = host.app(environ, response.start_response)
    except Exception:
        app_failed(response, environ, conn.push)
        finish(host, conn, response, request, environ)
        return
    if type(app_iter) is list and len(app_iter) == 1:
        # The whole body in memory, as most plain WSGI apps give it: written at once, so there
        # is nothing to resume and no exchange to keep.
        try:
            response.write_whole(app_iter[0])
        except Exception:
            app_failed(response, environ, conn.push)
        finish(host, conn, response, request, environ)
        return
    exchange = InlineExchange(host, conn, response, app_iter, request, environ)
    conn.current = exchange
    try:
        file = file_to_send(response, app_iter) if host.sendfile else None
    except Exception:  # the headers cannot be sent: a 500, never an error out of the loop
        conn.current = None
        app_failed(response, environ, conn.push)
        close_iterable(app_iter)
        finish(host, conn, response, request, environ)
        return
    if file is not None:
        conn.file = file
        conn.flush()
        return
    exchange.pump()


class InlineExchange:
    """A response being produced on the loop thread; resumed when the client drains.

    Made as soon as the app has returned its iterable, so it tells the response whether that
    iterable gives the body's length (:meth:`Response.sized_by`).
    """

    __slots__ = ("host", "conn", "response", "app_iter", "iterator", "request", "environ")
    paused = True  # always resumable by a writable event: the loop produces its body

    def __init__(self, host: AppHost, conn: Connection, response: Response,
                 app_iter: Iterable[bytes], request: Request, environ: dict[str, Any]) -> None:
        response.sized_by(app_iter)
        self.host = host
        self.conn = conn
        self.response = response
        self.app_iter = app_iter
        self.iterator: Iterator[bytes] = iter(app_iter)
        self.request = request
        self.environ = environ

    def pump(self) -> None:
        conn = self.conn
        response = self.response
        try:
            for chunk in self.iterator:
                response.write(chunk)
                # The app may take its time over the next chunk (an event stream, a token
                # stream), and this thread is the one that sends: put this one on the wire
                # first, as far as the socket takes it. What the socket cannot take piles up
                # until the high-water mark, then production waits for on_writable. A body
                # whose whole Content-Length is written goes out with the flush after the
                # request (with any pipelined answers), so a hello world costs no extra send.
                if response.remaining:  # not complete (-1: no length declared)
                    conn.flush()
                    if conn.out_size > HIGH_WATER or conn.closed:
                        return  # resumed from on_writable
            response.finish()
        except Exception:
            app_failed(response, self.environ, conn.push)
        self._done()

    def _done(self) -> None:
        self.conn.current = None
        close_iterable(self.app_iter)
        finish(self.host, self.conn, self.response, self.request, self.environ)

    def resume(self) -> None:
        if self.conn.file is None:
            self.pump()
            self.conn.serve()

    def file_sent(self) -> None:
        self._done()
        self.conn.serve()

    def connection_lost(self) -> None:
        self.conn.current = None
        close_iterable(self.app_iter)
        self.request.body.close()
        self.host.on_request(-1)
