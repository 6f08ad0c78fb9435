"""The control socket behind ``flask cluster-ctl``: one JSON request line, one JSON reply line.

The socket is created with mode 0600 inside a directory only its owner may enter, and the master
also checks the peer's uid where the OS reports it (``SO_PEERCRED``), so only the user running
the cluster can control it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import Config
from ..listeners import SocketInUse, remove_stale_socket
from .registry import RegistryError, make_private, register, runtime_base, safe_name

MAX_REQUEST = 64 * 1024
log = logging.getLogger("flask_cluster.master")
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Controlled(Protocol):
    """What the control socket can ask of the master."""

    def status(self) -> dict[str, Any]: ...

    def reload(self) -> None: ...

    def stop(self, *, graceful: bool) -> None: ...

    def scale(self, count: int) -> None: ...

    def publish(self, topic: str, data: Any) -> int: ...


def execute(request: dict[str, Any], master: Controlled) -> dict[str, Any]:
    """Carry out one control request; the reply always says ``ok`` and, if not, why."""
    command = request.get("command")
    if command == "status":
        return {"ok": True, **master.status()}
    if command == "reload":
        master.reload()
    elif command == "stop":
        master.stop(graceful=True)
    elif command == "scale":
        count = request.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return {"ok": False, "error": f"scale needs a whole number of at least 1, not {count!r}"}
        try:
            master.scale(count)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
    elif command == "broadcast":
        topic = request.get("topic")
        if not isinstance(topic, str) or not topic:
            return {"ok": False, "error": "broadcast needs a topic"}
        try:
            return {"ok": True, "delivered_to": master.publish(topic, request.get("data"))}
        except ValueError as exc:  # data that does not pickle, or no way to sign it
            return {"ok": False, "error": str(exc)}
    else:
        return {"ok": False, "error": f"unknown command {command!r}"}
    return {"ok": True}


class ControlError(Exception):
    """The control socket cannot be reached or answered with an error."""


def control_path(*, explicit: str | None, pid_file: str | None, uds: str | None, app_name: str,
                 host: str, port: int) -> str:
    """Where the master listens for ``cluster-ctl``: the same rule on both sides.

    ``--control-socket`` if given; else ``<pid file>.ctl``; else ``<uds path>.ctl``; else
    ``$XDG_RUNTIME_DIR/flask-cluster/<app>-<host>-<port>.ctl`` (``/tmp/flask-cluster-<uid>/``
    without ``XDG_RUNTIME_DIR``).
    """
    if explicit:
        return explicit
    if pid_file:
        return f"{pid_file}.ctl"
    if uds:
        return f"{uds}.ctl"
    name = safe_name(f"{app_name}-{host}-{port}")
    return str(runtime_base() / f"{name}.ctl")


def open_control(config: Config, listener: socket.socket, app_name: str,
                 master: Controlled) -> ControlServer:
    """The control socket for the cluster serving on ``listener``."""
    port = listener.getsockname()[1] if listener.family != socket.AF_UNIX else 0
    path = control_path(explicit=config.control_socket, pid_file=config.pid, uds=config.uds,
                        app_name=app_name, host=config.host, port=port)
    default = not (config.control_socket or config.pid or config.uds)
    server = ControlServer(path, lambda request: execute(request, master), private_dir=default)
    try:
        server.link = register(app_name, path, os.getpid())
    except (OSError, RegistryError) as exc:  # only discovery is lost: cluster-ctl needs options
        log.warning("cluster-ctl will not find this cluster by its app alone: %s", exc)
    return server


class ControlServer:
    """Non-blocking: :meth:`watch` puts it on the master's selector."""

    def __init__(self, path: str, handler: Handler, *, private_dir: bool = False) -> None:
        """``private_dir``: the directory is the default one we chose, so it must be ours alone
        (``/tmp/flask-cluster-<uid>`` may have been made by another user before us)."""
        self.path = path
        self.link: Path | None = None  # where cluster-ctl finds us (registry.register)
        self.handler = handler
        directory = os.path.dirname(path) or "."
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            if private_dir:
                make_private(Path(directory))
            # A live cluster's control socket is never taken over: a second cluster-run with the
            # same --pid or --control-socket would leave the first one out of cluster-ctl's reach.
            remove_stale_socket(path)
            old_umask = os.umask(0o177)  # the socket is born 0600: no window with looser modes
            try:
                self.sock.bind(path)
            finally:
                os.umask(old_umask)
        except SocketInUse as exc:
            self.sock.close()
            raise ControlError(f"cannot create the control socket {path}: {exc} (a cluster with "
                               f"the same --pid or --control-socket is running?)") from None
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot create the control socket {path}: "
                               f"{exc.strerror or exc}") from None
        except RegistryError as exc:
            self.sock.close()
            raise ControlError(str(exc)) from None
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.clients: dict[socket.socket, bytearray] = {}
        self.refused: set[socket.socket] = set()

    def watch(self, selector: selectors.BaseSelector) -> None:
        def on_readable(client: Any, _mask: int) -> None:
            selector.unregister(client)
            if not self.read(client):
                selector.register(client, selectors.EVENT_READ, on_readable)

        def on_accept(_sock: Any, _mask: int) -> None:
            client = self.accept()
            if client is not None:
                selector.register(client, selectors.EVENT_READ, on_readable)

        selector.register(self.sock, selectors.EVENT_READ, on_accept)

    def accept(self) -> socket.socket | None:
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        client.setblocking(False)
        self.clients[client] = bytearray()
        if not _same_user(client):
            # Refused once its request is read: replying and hanging up at once reaches a
            # client that is still sending as a broken pipe instead of this refusal.
            self.refused.add(client)
        return client

    def read(self, client: socket.socket) -> bool:
        """Read from ``client``; answer and return True once its request line is complete."""
        buffer = self.clients[client]
        try:
            data = client.recv(MAX_REQUEST)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        buffer += data
        if b"\n" not in buffer and data and len(buffer) < MAX_REQUEST:
            return False
        del self.clients[client]
        line = bytes(buffer).split(b"\n", 1)[0]
        if client in self.refused:
            self.refused.discard(client)
            _reply(client, {"ok": False, "error": "permission denied"})
            client.close()
            return True
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            reply = self.handler(request)
        except ValueError as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        _reply(client, reply)
        client.close()
        return True

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.sock.close()
        for path in (self.path, self.link):
            with contextlib.suppress(OSError):
                if path is not None:
                    os.unlink(path)


def _same_user(client: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # the 0600 mode and the 0700 directory still keep others out
    creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def _reply(client: socket.socket, reply: dict[str, Any]) -> None:
    client.setblocking(True)
    client.settimeout(2.0)
    with contextlib.suppress(OSError):
        client.sendall(json.dumps(reply).encode() + b"\n")


def request(path: str, command: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the master at ``path``; its reply (raises :class:`ControlError`)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(command).encode() + b"\n")
        data = bytearray()
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except FileNotFoundError:
        raise ControlError(f"no cluster is listening at {path} (is it running? same --pid, "
                           "--uds, --host/--port or --control-socket as cluster-run?)") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the cluster at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply: dict[str, Any] = json.loads(bytes(data))
    except ValueError:
        raise ControlError(f"the cluster at {path} sent no valid reply") from None
    if not reply.get("ok", False):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply
