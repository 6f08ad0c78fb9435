"""A worker's HTTP/1.1 engine: one event loop (:mod:`.poller`), the app inline or on a thread pool.

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
from collections.abc import Callable
from typing import Any

from ..http.errors import ServerFault, ShuttingDown
from ..http.parser import Limits, Request
from ..http.wsgi import WSGIApp, apply_forwarded, build_environ, error_response
from ..listeners import accept_batch, no_delay
from .access_log import STARTED, AccessLog
from .app_call import AppHost, Record
from .connection import Connection, TLSConnection
from .inline import start_inline
from .poller import new_poller
from .send_batch import SendBatch
from .threaded import AppPool

log = logging.getLogger("flask_cluster.worker")

TICK = 0.5  # seconds between housekeeping passes (heartbeat, keep-alive sweep)
ACCEPT_BATCH = 32  # connections taken per wake-up from a listener of our own (reuseport)
NODELAY_INHERITED = sys.platform.startswith("linux")  # accepted sockets copy the listener's
Reader = Callable[[], object]  # what it returns is ignored
Start = Callable[[AppHost, Connection, Request, dict[str, Any]], None]


class Engine:
    def __init__(self, app: WSGIApp, *, threads: int, keep_alive: float, limits: Limits,
                 base_environ: dict[str, Any], access_log: AccessLog | None,
                 on_request: Callable[[int], None],
                 on_connection: Callable[[int], None] = lambda delta: None,
                 tls: ssl.SSLContext | None = None,
                 header_timeout: float = 10.0, max_connections: int = 1000,
                 trusted_proxies: frozenset[str] = frozenset(),
                 record: Record | None = None) -> None:
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
        self.record = record  # --metrics: each answered request onto the scoreboard
        self.on_request = on_request  # +1 when a request starts, -1 when it ends
        self.on_connection = on_connection  # +1 when a connection opens, -1 when it closes
        self.tls = tls
        self.sendfile = tls is None  # os.sendfile would bypass the encryption
        self.selector = new_poller()
        self.connections: set[Connection] = set()
        self.stopping = False
        self.deadline = 0.0
        # Set by the worker's SIGTERM handler (recording only): with --threads 1 a long view
        # holds the loop, and the requests read meanwhile would start before the loop sees the
        # signal. start() looks here first, and the grace counts from the signal.
        self.stop_asked_at = 0.0
        self.on_stop_asked: Callable[[], None] = lambda: None
        self.tick_callbacks: list[Callable[[float], None]] = []
        self.idle_callbacks: list[Callable[[], None]] = []  # after every batch of events
        # Given each connection accepted here first; True: it went elsewhere (even_spread.py).
        self.divert: Callable[[socket.socket, Any], bool] | None = None
        # Busy connections that go back to the master once their response is done
        # (migration.py): never closed here for stopping.
        self.moving: set[Connection] = set()
        self.pool: AppPool | None = None
        self.batch: SendBatch | None = SendBatch() if threads == 1 else None
        self._start: Start = start_inline
        if threads > 1:
            self.pool = AppPool(threads, self.add_reader)
            self._start = self.pool.start

    # -- sources ----------------------------------------------------------------------------

    def add_reader(self, fileobj: Any, callback: Reader) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def accept_from(self, listener: socket.socket, *, shared: bool = False,
                    on_accept: Callable[[], None] = lambda: None) -> None:
        """Accept connections on ``listener`` ourselves (``shared`` and ``reuseport``, and
        the master's while it leaves it to the workers); ``on_accept`` counts each.

        On a listener ``shared`` with other workers, one connection per wake-up: every idle
        worker is woken for a burst of connects, and one that took them all would leave the
        others idle while it serves the whole burst.
        """
        batch = 1 if shared else ACCEPT_BATCH

        def take(sock: socket.socket, address: Any) -> bool:
            on_accept()
            if self.divert is None or not self.divert(sock, address):
                self.add_connection(sock, peer_of(address))
            return self.accepting

        def accept() -> None:
            exc = accept_batch(listener.accept, take, batch)
            if exc is None:
                return
            if exc.errno == errno.EINVAL or listener.fileno() < 0:
                # No longer listening, or closed by _stop earlier in this batch of events.
                self.remove_listener(listener)
                return
            # EMFILE and friends: keep serving who we have, try again later
            log.warning("accept failed: %s; pausing accepts for a second", exc)
            self._pause_accepting()

        no_delay(listener)
        self.listeners.append((listener, accept))
        if self.accepting:  # else at capacity: _resume_accepting adds it
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
        # Nothing to do for the usual connection (its address known, Linux): socket.family
        # builds an enum member, costly for every connection.
        if (peer is None or not NODELAY_INHERITED) and sock.family != socket.AF_UNIX:
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
            conn = TLSConnection(self, tls_sock, self.limits, addr, port)
        else:
            conn = Connection(self, sock, self.limits, addr, port)
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
        if not conn.http.closing or conn.http.has_requests:
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

    def start(self, conn: Connection, request: Request) -> None:
        """Answer ``request`` with the app, inline or on the pool. Its environ is built here, on
        the loop thread whatever the thread count, so that a failure to build it is met in one
        place: answered 500, logged, the connection closed after what it already has."""
        if self.stop_asked_at and not self.stopping:
            self.on_stop_asked()  # as the loop would on the signal's wake-up
        if self.stopping:
            if conn not in self.moving:  # else handed back once answered (migration.py)
                request.keep_alive = False
            if time.monotonic() >= self.deadline:
                conn.http.fail(ShuttingDown("the worker's --graceful-timeout ran out"))
                request.body.close()
                return
        try:
            environ = self.environ_for(conn, request)
        except Exception as exc:
            fault = ServerFault(f"cannot prepare {request.method!r} {request.url!r}: {exc!r}")
            fault.__cause__ = exc
            conn.http.fail(fault)
            request.body.close()
            return
        if self.batch is not None:
            self.batch.before_request(conn.last_active)
        self.on_request(1)
        conn.answering_since = conn.last_active  # when the request was read: no clock call
        self._start(self, conn, request, environ)

    def oldest_busy(self) -> float | None:
        """See :meth:`AppPool.oldest_busy`; None without a pool."""
        return self.pool.oldest_busy() if self.pool is not None else None

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

    def send_soon(self, conn: Connection) -> None:
        if self.batch is None or not self.batch.hold(conn):
            conn.flush()

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` for events and handle them: one pass of the loop."""
        batch = self.batch
        if batch is not None:
            batch.begin()
        for target, mask in self.selector.ready(timeout):
            if isinstance(target, Connection):
                try:
                    if mask & selectors.EVENT_READ:
                        target.on_readable()
                    if mask & selectors.EVENT_WRITE and not target.closed:
                        target.on_writable()
                except Exception:
                    target.crashed()
            else:
                try:
                    target()
                except Exception:  # EMFILE, ENOSPC...: logged; the loop serves on
                    log.exception("error in the worker's loop")
        if batch is not None:
            batch.end()
        for callback in self.idle_callbacks:
            callback()

    def _housekeeping(self, now: float) -> None:
        for callback in self.tick_callbacks:
            try:
                callback(now)
            except Exception:  # the heartbeat among them: logged; the loop serves on
                log.exception("error in the worker's housekeeping")
        idle_since = now - self.keep_alive
        stalled_since = now - self.header_timeout
        for conn in list(self.connections):
            if conn.lingering:
                if now >= conn.lingering:
                    conn.close()
                continue
            if conn.current is not None or conn.out:
                continue  # the server's turn: the app or the client's reading holds it
            http = conn.http
            if http.in_progress:
                if not http.headers_complete and conn.request_started < stalled_since:
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
        self.deadline = (self.stop_asked_at or time.monotonic()) + graceful_timeout
        self._close_idle()

    def _close_idle(self) -> None:
        for conn in list(self.connections - self.moving if self.moving else self.connections):
            if conn.idle and conn.request_started:
                conn.close()  # between two keep-alive requests
            elif conn.current is None and not conn.http.has_requests and not conn.out:
                # A request still arriving: let it come (closing now would drop its bytes and
                # leave the client waiting until the deadline); serve() answers it with
                # "Connection: close" as we are stopping.
                continue
            elif not conn.idle:
                conn.http.closing = True
            # A connection that has not sent its first request yet was accepted on our behalf
            # (its request may be on the wire): it keeps the keep-alive timeout to send it, and
            # is answered with "Connection: close".

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.pool is not None:
            self.pool.close()
        self.selector.close()


def peer_of(address: Any) -> tuple[str, str]:
    """``(address, port)`` as strings from what ``accept()`` or ``getpeername()`` gives."""
    if isinstance(address, tuple):
        return address[0], str(address[1])
    return "", ""
