"""The listening sockets: TCP, Unix, inherited from systemd, and per-worker ``SO_REUSEPORT``."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, TypeVar

A = TypeVar("A")
log = logging.getLogger("flask_cluster")

# One client's trouble, not ours: it reset before we took it, or its network failed. Linux's
# accept(2): "treat them like EAGAIN by retrying". The master's and the workers' accept loops
# both skip such a connection and go on.
ACCEPT_SKIP_ERRORS = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
    "EOPNOTSUPP", "ENETUNREACH", "EPERM") if hasattr(errno, name))


def accept_batch(accept: Callable[[], tuple[A, Any]], take: Callable[[A, Any], bool],
                 batch: int) -> OSError | None:
    """Accept up to ``batch`` connections with ``accept``, giving each to ``take`` (False: stop
    here). The one policy of the master and the workers: a client's own failure is skipped, an
    empty backlog ends the batch, and any other error ends it and is returned for the caller to
    decide (pause, or stop listening)."""
    for _ in range(batch):
        try:
            conn, address = accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in ACCEPT_SKIP_ERRORS:
                log.debug("accept failed for one connection: %s", exc)
                continue  # that client is gone; the next one may be fine
            return exc
        if not take(conn, address):
            return None
    return None


BACKLOG = 2048  # as gunicorn and nginx: a burst of connects waits in the kernel, not refused
SD_LISTEN_FDS_START = 3
BIND_RETRY = 5.0  # seconds an address in use is tried again
BIND_PAUSE = 0.25


class ListenError(Exception):
    """The address cannot be listened on; the message says why in one line."""


def open_listener(host: str, port: int, uds: str | None, *,
                  reuseport: bool) -> tuple[socket.socket, bool]:
    """The master's listening socket, and whether it was inherited from systemd (which keeps
    it for the next start: then we must never shut it down, only close our copy).

    With ``reuseport`` the master's socket is bound but never listens: it holds the port (and
    resolves port 0) while each worker listens on a socket of its own bound to the same address.
    """
    inherited = systemd_listeners()
    if inherited:
        if reuseport:
            raise ListenError("--balance reuseport cannot use a socket passed by systemd")
        return no_delay(inherited[0]), True
    if uds is not None:
        return _unix_listener(uds), False
    return no_delay(_tcp_socket(host, port, reuseport=reuseport, listen=not reuseport)), False


def reuseport_listener(address: tuple[str, int], family: socket.AddressFamily) -> socket.socket:
    """A worker's own listening socket on the master's address (``--balance reuseport``)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return no_delay(sock)


def no_delay(sock: socket.socket) -> socket.socket:
    """TCP_NODELAY on a listener: Linux copies it to every accepted connection, which saves a
    setsockopt per connection (responses go out whole, so Nagle only adds latency)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tcp_socket(host: str, port: int, *, reuseport: bool, listen: bool) -> socket.socket:
    """Bind, retrying for :data:`BIND_RETRY` seconds while the address is in use: right after a
    master was killed, a worker of it may still be finishing a request on the old socket
    (gunicorn retries for 5 s too)."""
    deadline = time.monotonic() + BIND_RETRY
    while True:
        try:
            return _bind_tcp(host, port, reuseport=reuseport, listen=listen)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
            if deadline - time.monotonic() > BIND_RETRY - BIND_PAUSE:  # the first failure only
                log.warning("%s:%s is in use; trying again for %gs", host, port, BIND_RETRY)
            time.sleep(BIND_PAUSE)


def _bind_tcp(host: str, port: int, *, reuseport: bool, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ListenError("--balance reuseport needs SO_REUSEPORT, which this OS lacks")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _unix_listener(path: str) -> socket.socket:
    try:
        remove_stale_socket(path)
    except SocketInUse as exc:
        raise ListenError(f"cannot listen on unix:{path}: {exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


class SocketInUse(Exception):
    """A Unix socket path that another live process serves, or that is not a socket."""


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse (:class:`SocketInUse`) to touch a live
    one or a file that is not a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse("it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise SocketInUse("another server is listening there")
    finally:
        probe.close()


def systemd_listeners() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS``), consumed once."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def describe(sock: socket.socket, *, tls: bool = False) -> str:
    """The address a user would type: ``http://127.0.0.1:5000`` or ``unix:/run/app.sock``."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def stop_listening(sock: socket.socket | None) -> None:
    """Refuse new connections on ``sock`` from now on, for every process that shares it.

    A listener nobody accepts from any more still completes handshakes into the kernel's
    backlog: those clients would wait until the last process holding it exits, then be reset.
    On Linux, ``shutdown`` takes a listening socket (TCP or Unix) out of the listening state
    for all its holders while the descriptor stays valid (so no selector sees a reused fd).
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):  # not a listener (reuseport's master socket), or macOS
        sock.shutdown(socket.SHUT_RDWR)


def close_listener(sock: socket.socket | None, uds: str | None, inherited: bool) -> None:
    """Close our listener; remove its Unix socket file unless it was handed to us."""
    close_quietly(sock)
    if uds and sock is not None and not inherited:
        with contextlib.suppress(OSError):
            os.unlink(uds)


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
