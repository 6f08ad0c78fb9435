"""A worker's HTTP/1.1 engine: one ``selectors`` loop, the app inline or on a thread pool.

Written here rather than taken from a library because it is the product: it decides the
per-request cost, and a general-purpose server (asyncio, werkzeug's) spends several times our
budget outside the app. The loop thread owns every socket. With ``threads == 1`` the app runs on
the loop thread between reads and writes; with more, the app runs on a pool while the loop keeps
reading and writing, and idle keep-alive connections never hold an app thread.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..http.errors import ServerFault
from ..http.parser import Limits, Request
from ..http.wsgi import Response, WSGIApp, apply_forwarded, build_environ, error_response
from ..listeners import ACCEPT_SKIP_ERRORS, no_delay
from .access_log import STARTED, AccessLog
from .connection import HIGH_WATER, Connection, TLSConnection
from .in_flight import InlineExchange, ThreadedExchange, file_to_send

log = logging.getLogger("flask_cluster.worker")

TICK = 0.5  # seconds between housekeeping passes (heartbeat, keep-alive sweep)
ACCEPT_BATCH = 32  # connections taken per wake-up from a listener of our own (reuseport)
NODELAY_INHERITED = sys.platform.startswith("linux")  # accepted sockets copy the listener's
Reader = Callable[[], None]


class Engine:
    def __init__(self, app: WSGIApp, *, threads: int, keep_alive: float, limits: Limits,
                 base_environ: dict[str, Any], access_log: AccessLog | None,
                 on_request: Callable[[int], None],
                 on_connection: Callable[[int], None] = lambda delta: None,
                 tls: ssl.SSLContext | None = None,
                 header_timeout: float = 10.0, max_connections: int = 1000,
                 trusted_proxies: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.listeners: list[tuple[socket.socket, Reader]] = []
        self.accepting = True
        self.limits = limits
        self.keep_alive = keep_alive
        self.base_environ = base_environ
        self.access_log = access_log
        self.on_request = on_request  # +1 when a request starts, -1 when it ends
        self.on_connection = on_connection  # +1 when a connection opens, -1 when it closes
        self.tls = tls
        self.selector = selectors.DefaultSelector()
        self.connections: set[Connection] = set()
        self.stopping = False
        self.deadline = 0.0
        self.tick_callbacks: list[Callable[[float], None]] = []
        self.idle_callbacks: list[Callable[[], None]] = []  # after every batch of events
        self.pool: ThreadPoolExecutor | None = None
        self.busy: set[ThreadedExchange] = set()  # on a pool thread now
        self._wake_queue: deque[ThreadedExchange] = deque()
        if threads > 1:
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="app")
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self.add_reader(self._wake_r, self._on_wake)

    # -- sources ----------------------------------------------------------------------------

    def add_reader(self, fileobj: Any, callback: Reader) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def accept_from(self, listener: socket.socket, *, shared: bool = False) -> None:
        """Accept connections on ``listener`` ourselves (``shared`` and ``reuseport``).

        On a listener ``shared`` with other workers, one connection per wake-up: every idle
        worker is woken for a burst of connects, and one that took them all would leave the
        others idle while it serves the whole burst.
        """
        batch = 1 if shared else ACCEPT_BATCH

        def accept() -> None:
            for _ in range(batch):
                try:
                    sock, address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in ACCEPT_SKIP_ERRORS:
                        continue  # that client is gone; the next one may be fine
                    if exc.errno == errno.EINVAL or listener.fileno() < 0:
                        # No longer listening, or closed by _stop earlier in this batch of events.
                        self.remove_listener(listener)
                        return
                    # EMFILE and friends: keep serving who we have, try again later
                    log.warning("accept failed: %s; pausing accepts for a second", exc)
                    self._pause_accepting()
                    return
                self.add_connection(sock, peer_of(address))
                if not self.accepting:
                    return

        no_delay(listener)
        self.listeners.append((listener, accept))
        self.add_reader(listener, accept)

    def remove_listener(self, listener: socket.socket) -> None:
        self.listeners = [(sock, cb) for sock, cb in self.listeners if sock is not listener]
        self.remove_reader(listener)

    def _pause_accepting(self) -> None:
        """At capacity: leave new connections in the shared backlog for workers with room."""
        if self.accepting:
            self.accepting = False
            for listener, _ in self.listeners:
                self.remove_reader(listener)

    def _resume_accepting(self) -> None:
        if not self.accepting and not self.stopping \
                and len(self.connections) < self.max_connections:
            self.accepting = True
            for listener, accept in self.listeners:
                self.add_reader(listener, accept)

    def add_connection(self, sock: socket.socket, peer: tuple[str, str] | None = None) -> None:
        """Serve ``sock``; ``peer`` is the client's (address, port) when already known."""
        if len(self.connections) >= self.max_connections:
            # Handed over by the master while full: a clear refusal beats an unbounded queue.
            try:
                sock.send(error_response(503, "Service Unavailable", keep_alive=False))
            except OSError:
                pass
            sock.close()
            return
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            if not NODELAY_INHERITED:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if peer is None:
                try:
                    peer = peer_of(sock.getpeername())
                except OSError:  # already reset by the client
                    sock.close()
                    return
        addr, port = peer or ("", "")
        conn: Connection
        if self.tls is not None:
            try:
                tls_sock = self.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
            except (ssl.SSLError, OSError):
                sock.close()
                return
            conn = TLSConnection(self, tls_sock, addr, port)
        else:
            conn = Connection(self, sock, addr, port)
        self.connections.add(conn)
        self.on_connection(1)
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        if len(self.connections) >= self.max_connections:
            self._pause_accepting()
        # A client sends its request right after connecting, so by the time the connection
        # reaches us it has usually arrived: read now instead of after another select.
        conn.on_readable()

    def watch_writes(self, conn: Connection, on: bool) -> None:
        events = selectors.EVENT_WRITE if on else 0
        if not conn.closing or conn.parser.requests:
            events |= selectors.EVENT_READ
        if not events:
            events = selectors.EVENT_READ  # keep it registered to notice a reset
        self.selector.modify(conn.sock, events, conn)

    def stop_reading(self, conn: Connection) -> None:
        if conn.want_write:
            self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            self.selector.unregister(conn.sock)
            self.selector.register(conn.sock, selectors.EVENT_WRITE, conn)
            conn.want_write = True

    def forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.on_connection(-1)
        if not self.accepting:
            self._resume_accepting()
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        current = conn.current
        if isinstance(current, ThreadedExchange):
            current.abort()
            self._transfer(current)  # settles it now if the app is done, else when it is
        elif isinstance(current, InlineExchange):
            conn.current = None
            self._close_iterable(current.app_iter)
            current.request.body.close()
            self.on_request(-1)

    # -- requests ---------------------------------------------------------------------------

    def environ_for(self, conn: Connection, request: Request) -> dict[str, Any]:
        environ = build_environ(request, self.base_environ, conn.remote_addr, conn.remote_port)
        trusted = self.trusted_proxies
        if trusted and ("HTTP_X_FORWARDED_FOR" in environ or "HTTP_X_FORWARDED_PROTO" in environ) \
                and (conn.remote_addr in trusted or "*" in trusted):
            apply_forwarded(environ)
        if self.access_log is not None:
            environ[STARTED] = time.perf_counter()
        return environ

    def serve(self, conn: Connection) -> None:
        """Answer the connection's parsed requests in order, one at a time."""
        requests = conn.parser.requests
        while conn.current is None and requests and not conn.closed:
            request = requests.popleft()
            if self.stopping:
                request.keep_alive = False
            environ = self._prepare(conn, request)
            if environ is None:
                break
            self.on_request(1)
            if self.pool is None:
                self._start_inline(conn, request, environ)
            else:
                exchange = ThreadedExchange(self, conn, request, environ)
                conn.current = exchange
                self.busy.add(exchange)
                self.pool.submit(exchange.run)
        if conn.current is None and not requests:
            conn.after_requests()
        conn.flush()

    def _prepare(self, conn: Connection, request: Request) -> dict[str, Any] | None:
        """The request's environ, built on the loop thread whatever the thread count, so that a
        failure here is met in one place: answered 500, logged, the connection closed after
        what it already has. None when it failed."""
        try:
            return self.environ_for(conn, request)
        except Exception as exc:
            fault = ServerFault(f"cannot prepare {request.method!r} {request.url!r}: {exc!r}")
            fault.__cause__ = exc
            conn.error = fault
            conn.parser.requests.clear()
            request.body.close()
            return None

    def _start_inline(self, conn: Connection, request: Request, environ: dict[str, Any]) -> None:
        response = Response(conn.push, request)
        try:
            app_iter = self.app(environ, response.start_response)
        except Exception:
            self._app_failed(conn, response, environ)
            self._finish(conn, response, request, environ)
            return
        exchange = InlineExchange(response, app_iter, request, environ)
        conn.current = exchange
        try:
            sending_file = self._start_file(conn, response, app_iter)
        except Exception:  # the headers cannot be sent: a 500, never an error out of the loop
            conn.current = None
            self._app_failed(conn, response, environ)
            self._close_iterable(app_iter)
            self._finish(conn, response, request, environ)
            return
        if sending_file:
            return
        self._pump(conn, exchange)

    def _pump(self, conn: Connection, exchange: InlineExchange) -> None:
        response = exchange.response
        try:
            for chunk in exchange.iterator:
                response.write(chunk)
                # The app may take its time over the next chunk (an event stream, a token
                # stream), and this thread is the one that sends: put this one on the wire
                # first, as far as the socket takes it. What the socket cannot take piles up
                # until the high-water mark, then production waits for on_writable. A body
                # whose whole Content-Length is written goes out with the flush after the
                # request (with any pipelined answers), so a hello world costs no extra send.
                if not response.complete:
                    conn.flush()
                    if conn.out_size > HIGH_WATER or conn.closed:
                        return  # resumed from on_writable
            response.finish()
        except Exception:
            self._app_failed(conn, response, exchange.environ)
        conn.current = None
        self._close_iterable(exchange.app_iter)
        self._finish(conn, response, exchange.request, exchange.environ)

    def produce(self, exchange: ThreadedExchange, environ: dict[str, Any], response: Response) -> None:
        """On a pool thread: call the app and feed its body to the exchange."""
        app_iter: Iterable[bytes] = ()
        try:
            app_iter = self.app(environ, response.start_response)
            response.sized_by(app_iter)
            file = None if self.tls is not None else file_to_send(response, app_iter)
            if file is not None:
                exchange.file = file
                return
            for chunk in app_iter:
                response.write(chunk)
            response.finish()
        except ConnectionAbortedError:
            pass
        except Exception:
            if not exchange.aborted:
                self._app_failed(None, response, environ, sink=exchange.push)
        finally:
            if exchange.file is None:
                self._close_iterable(app_iter)
            else:
                exchange.environ["flask_cluster.file_iter"] = app_iter

    def resume(self, conn: Connection) -> None:
        """The client drained its buffer: produce more of the response in progress."""
        current = conn.current
        if isinstance(current, InlineExchange) and conn.file is None:
            self._pump(conn, current)
            self.serve(conn)
        elif isinstance(current, ThreadedExchange):
            self._transfer(current)

    def _start_file(self, conn: Connection, response: Response, app_iter: Iterable[bytes]) -> bool:
        if self.tls is not None:
            return False  # os.sendfile would bypass the encryption
        file = file_to_send(response, app_iter)
        if file is None:
            return False
        conn.file = file
        conn.flush()
        return True

    def file_sent(self, conn: Connection) -> None:
        current = conn.current
        conn.current = None
        if isinstance(current, InlineExchange):
            self._close_iterable(current.app_iter)
            self._finish(conn, current.response, current.request, current.environ)
        elif isinstance(current, ThreadedExchange):
            self._close_iterable(current.environ.pop("flask_cluster.file_iter", ()))
            self._finish(conn, current.response, current.request, current.environ)
        self.serve(conn)

    def _finish(self, conn: Connection, response: Response, request: Request,
                environ: dict[str, Any]) -> None:
        self.on_request(-1)
        request.body.close()  # a body past the spool threshold is a temporary file: free it now
        if not response.keep_alive or not request.keep_alive:
            conn.closing = True
            conn.parser.requests.clear()  # pipelined requests after a close are not answered
        if self.access_log is not None:
            self.access_log.write(environ, response)

    def _app_failed(self, conn: Connection | None, response: Response, environ: dict[str, Any],
                    sink: Callable[[bytes], None] | None = None) -> None:
        log.exception("error handling %s %s", environ.get("REQUEST_METHOD"), environ.get("RAW_URI"))
        if response.headers_sent:
            response.keep_alive = False  # the client has part of a response: only a close is honest
            if conn is not None:
                conn.closing = True
            return
        response.status = "500 Internal Server Error"
        response.status_code = 500
        response.headers_sent = True
        push = sink or (conn.push if conn is not None else None)
        if push is not None:
            push(error_response(500, "Internal Server Error", keep_alive=response.keep_alive))

    @staticmethod
    def _close_iterable(app_iter: Iterable[bytes]) -> None:
        close = getattr(app_iter, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("error closing the response iterable")

    # -- threads ----------------------------------------------------------------------------

    def wake(self, exchange: ThreadedExchange) -> None:
        """From a pool thread: tell the loop that ``exchange`` has something."""
        self._wake_queue.append(exchange)
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the loop has wake-ups pending already

    def _on_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        queue = self._wake_queue
        while queue:
            self._transfer(queue.popleft())

    def _transfer(self, exchange: ThreadedExchange) -> None:
        conn = exchange.conn
        if conn.closed:
            # The client left. Taking the chunks keeps the exchange's wake-ups coming (it is
            # queued at most once until taken), so its end is noticed and settled here.
            _chunks, done = exchange.take()
            if done:
                self._abandon(exchange)
            return
        if conn.current is not exchange or conn.out_size > HIGH_WATER:
            return
        chunks, done = exchange.take()
        if done:
            self.busy.discard(exchange)
        for chunk in chunks:
            conn.push(chunk)
        if done and exchange.file is not None:
            conn.file = exchange.file
            exchange.file = None
            conn.flush()
            return
        if done:
            conn.current = None
            self._finish(conn, exchange.response, exchange.request, exchange.environ)
            self.serve(conn)
        else:
            conn.flush()

    def _abandon(self, exchange: ThreadedExchange) -> None:
        """A threaded request whose client left: close what it opened, count its end once."""
        if exchange.settled:
            return
        exchange.settled = True
        self.busy.discard(exchange)
        if exchange.file is not None or "flask_cluster.file_iter" in exchange.environ:
            self._close_iterable(exchange.environ.pop("flask_cluster.file_iter", ()))
        exchange.request.body.close()  # the app is done with it
        self.on_request(-1)

    def oldest_busy(self) -> float | None:
        """Since when the longest-silent app call on a pool thread has produced no output (a
        stream that keeps yielding is not stuck, and time spent waiting for a slow client to
        read does not count); None when no thread is busy."""
        starts = [exchange.started for exchange in self.busy if not exchange.waiting]
        return min(starts, default=None)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`begin_stop` was called and every connection is done (or the
        graceful deadline passed)."""
        next_tick = time.monotonic() + TICK
        while True:
            self.run_once(TICK)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self._housekeeping(now)
            if self.stopping and (not self.connections or now >= self.deadline):
                break

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` for events and handle them: one pass of the loop."""
        for key, mask in self.selector.select(timeout):
            target = key.data
            if isinstance(target, Connection):
                try:
                    if mask & selectors.EVENT_READ:
                        target.on_readable()
                    if mask & selectors.EVENT_WRITE and not target.closed:
                        target.on_writable()
                except Exception:
                    self._connection_failed(target)
            else:
                target()
        for callback in self.idle_callbacks:
            callback()

    def _connection_failed(self, conn: Connection) -> None:
        """The last line of the invariant that no client can kill a worker: an error of ours
        that escaped a connection's handlers ends that connection only, with a 500 when no
        response of it has started, and a traceback in the log."""
        log.exception("internal error on the connection from %s:%s; closing it",
                      conn.remote_addr, conn.remote_port)
        if conn.closed:
            return
        try:
            if conn.current is None and not conn.out and conn.file is None:
                conn.sock.send(error_response(500, "Internal Server Error", keep_alive=False))
        except OSError:
            pass
        try:
            conn.close()
        except Exception:
            log.exception("error closing the connection from %s:%s", conn.remote_addr,
                          conn.remote_port)

    def _housekeeping(self, now: float) -> None:
        for callback in self.tick_callbacks:
            callback(now)
        idle_since = now - self.keep_alive
        stalled_since = now - self.header_timeout
        for conn in list(self.connections):
            if conn.lingering:
                if now >= conn.lingering:
                    conn.close()
                continue
            if conn.current is not None or conn.out:
                continue  # the server's turn: the app or the client's reading holds it
            parser = conn.parser
            if parser.in_progress:
                if not parser.headers_complete and conn.request_started < stalled_since:
                    conn.time_out()  # slowloris: headers trickling for too long
                elif conn.last_active < stalled_since:
                    conn.close()  # a body that stopped arriving
            elif getattr(conn, "handshaking", False):
                if conn.last_active < stalled_since:
                    conn.close()
            elif conn.last_active < idle_since:
                conn.close()  # idle keep-alive
        if self.stopping:
            self._close_idle()
        else:
            self._resume_accepting()

    def begin_stop(self, graceful_timeout: float) -> None:
        """Stop taking new requests; let those in progress finish within the timeout."""
        if self.stopping:
            return
        self.stopping = True
        self.deadline = time.monotonic() + graceful_timeout
        self._close_idle()

    def _close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.idle and conn.request_started:
                conn.close()  # between two keep-alive requests
            elif conn.current is None and not conn.parser.requests and not conn.out:
                # A request still arriving: let it come (closing now would drop its bytes and
                # leave the client waiting until the deadline); serve() answers it with
                # "Connection: close" as we are stopping.
                continue
            elif not conn.idle:
                conn.closing = True
            # A connection that has not sent its first request yet was accepted on our behalf
            # (its request may be on the wire): it keeps the keep-alive timeout to send it, and
            # is answered with "Connection: close".

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._wake_r.close()
            self._wake_w.close()
        self.selector.close()


def peer_of(address: Any) -> tuple[str, str]:
    """``(address, port)`` as strings from what ``accept()`` or ``getpeername()`` gives."""
    if isinstance(address, tuple):
        return address[0], str(address[1])
    return "", ""
