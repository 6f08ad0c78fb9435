"""The WSGI side of a request: environ in, response bytes out (PEP 3333). No socket I/O.

:class:`Response` is the ``start_response``/``write`` pair and the serializer: it sends the
header block lazily with the first body bytes, chooses ``Content-Length``, chunked encoding or
close-delimited framing, and says whether the connection may be kept alive.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from .parser import Request

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Sink = Callable[[bytes], None]

_methods: dict[bytes, str] = {}
MAX_CACHED_NAMES = 512
PERCENT = ord("%")  # an int: ``bytes in bytes`` first fails to read its operand as an int


class _EnvironKeys(dict[bytes, str | None]):
    """Header name -> environ key, remembered for the first :data:`MAX_CACHED_NAMES` names: a
    dict whose hits cost no call."""

    def __missing__(self, name: bytes) -> str | None:
        text = name.decode("latin-1").upper()
        key: str | None
        if "_" in text:
            key = None
        elif text in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = text.replace("-", "_")
        else:
            key = "HTTP_" + text.replace("-", "_")
        if len(self) < MAX_CACHED_NAMES:
            self[name] = key
        return key


_environ_keys = _EnvironKeys()


def environ_key(name: bytes) -> str | None:
    """``User-Agent`` -> ``HTTP_USER_AGENT``; ``None`` for names with ``_``, which we drop (as
    nginx and gunicorn do) so ``X_Forwarded_For`` cannot pose as ``X-Forwarded-For``."""
    return _environ_keys[name]


def base_environ(server_name: str, server_port: str, *, scheme: str, multithread: bool) -> dict[str, Any]:
    """The keys that are the same for every request a worker serves."""
    return {
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SCRIPT_NAME": "",
        "SERVER_SOFTWARE": "flask-cluster",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }


def build_environ(request: Request, base: dict[str, Any], remote_addr: str,
                  remote_port: str) -> dict[str, Any]:
    environ = base.copy()
    path = request.path
    method = _methods.get(request.method)
    if method is None:
        method = _methods.setdefault(request.method, request.method.decode("latin-1"))
    environ["REQUEST_METHOD"] = method
    url = request.url
    uri = environ["RAW_URI"] = environ["REQUEST_URI"] = url.decode("latin-1")
    if PERCENT in path:
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
    else:  # the path is the whole target when there is no query: decoded once
        environ["PATH_INFO"] = uri if path is url else path.decode("latin-1")
    query = request.query
    environ["QUERY_STRING"] = query.decode("latin-1") if query else ""
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    environ["REMOTE_ADDR"] = remote_addr
    environ["REMOTE_PORT"] = remote_port
    environ["wsgi.input"] = request.body
    keys = _environ_keys
    for name, value in request.headers:
        key = keys[name]
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    if request.authority is not None:  # RFC 9112 3.2.2: an absolute-form target's host wins
        environ["HTTP_HOST"] = request.authority.decode("latin-1")
    return environ


def parse_trusted(addresses: str) -> frozenset[str]:
    """``--forwarded-allow-ips``: a comma-separated list of addresses, or ``*``."""
    return frozenset(item.strip() for item in addresses.split(",") if item.strip())


def apply_forwarded(environ: dict[str, Any]) -> None:
    """Take the client address and scheme from a trusted proxy's ``X-Forwarded-*`` headers.

    The last ``X-Forwarded-For`` entry is the one our proxy added (earlier ones came from the
    client and can be forged); the originals stay in ``flask_cluster.proxy_addr``.
    """
    forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded_for:
        client = forwarded_for.rsplit(",", 1)[-1].strip()
        if client:
            environ["flask_cluster.proxy_addr"] = environ["REMOTE_ADDR"]
            environ["REMOTE_ADDR"] = client
    proto = environ.get("HTTP_X_FORWARDED_PROTO")
    if proto:
        proto = proto.rsplit(",", 1)[-1].strip().lower()
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto


class FileWrapper:
    """``wsgi.file_wrapper``: the connection sends it with ``os.sendfile`` when it can."""

    def __init__(self, filelike: IO[bytes], blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while chunk := read(self.blksize):
            yield chunk

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _DateCache:
    """The ``Date`` header, formatted once a second instead of once a request."""

    def __init__(self) -> None:
        self.second = -1
        self.line = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self.second:
            # The line first: an app thread that sees the new second must find its line (it
            # found "" in a fresh worker, and the response was refused as a bad header: a 500).
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\n"
            self.second = now
        return self.line


date_header = _DateCache()
NO_BODY_STATUS = frozenset((204, 304))
HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "upgrade",
                        "proxy-connection", "te", "trailer"))


class ResponseError(Exception):
    """The app broke the WSGI contract; the response cannot be completed."""


_status_codes: dict[str, int] = {}  # statuses already found valid, as most apps use a few


def parse_status(status: str) -> int:
    """The code of a valid final status line such as ``"200 OK"``, else :class:`ResponseError`."""
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        raise ResponseError(f"invalid status {status!r}") from None
    if len(status) < 4 or status[3] != " " or code < 100:
        raise ResponseError(f"invalid status {status!r}")
    if code < 200:
        # 1xx is interim (RFC 9110 15.2): the client would keep waiting for the response.
        raise ResponseError(f"status {status!r} is interim, not a response")
    return code


class Response:
    """``start_response`` and the serializer for one request.

    Body bytes go to ``sink``, the header block with the first of them: each chunk is passed on
    as the app produces it, never held for the next, because the next may be seconds away (an
    event stream). Only when the app says how long its body is (:meth:`sized_by`) does a body
    without ``Content-Length`` get one; any other gets chunked encoding (HTTP/1.1) or ends with
    the close (HTTP/1.0).
    """

    __slots__ = ("sink", "keep_alive", "head", "version", "status", "status_code", "headers",
                 "headers_sent", "chunked", "remaining", "length", "body_bytes", "unframed",
                 "bodyless")

    def __init__(self, sink: Sink, request: Request) -> None:
        self.sink = sink
        self.keep_alive = request.keep_alive
        self.head = request.method == b"HEAD"
        self.version = request.version
        self.status: str | None = None
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.remaining = -1  # bytes still due under the app's Content-Length; -1: not declared
        self.length: int | None = None  # the whole body's size, known from the app's iterable
        self.body_bytes = 0  # for the access log
        # Set with the status. unframed: 204 and 304 have no body, so no length or chunking
        # is added. bodyless: no body bytes go out (those two, and every answer to HEAD),
        # whatever Content-Length says: it is the length a GET would get.
        self.unframed = False
        self.bodyless = self.head

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise ResponseError("start_response called a second time without exc_info")
        code = _status_codes.get(status) if type(status) is str else None
        if code is None:
            code = parse_status(status)
            if len(_status_codes) < MAX_CACHED_NAMES:
                _status_codes[status] = code
        self.status = status
        self.status_code = code
        self.headers = headers
        self.unframed = code in NO_BODY_STATUS
        self.bodyless = self.head or self.unframed
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable, and where iterated body chunks go."""
        if not data:
            return
        if self.headers_sent:
            body = self._framed(data)
            if body:
                self.sink(body)
            return
        # The header block and the first chunk in one piece: under --threads N one hand-over
        # to the loop, which would otherwise wake for the headers while the body is on its way.
        head = self._head(self.length)
        self.sink(head + self._framed(data))

    def sized_by(self, app_iter: Iterable[bytes]) -> None:
        """The app returned ``app_iter``: when it is a list or tuple of one bytestring, that is
        the whole body, so its length goes out as ``Content-Length`` (PEP 3333 allows it for an
        iterable whose ``len()`` is 1; waitress and granian do the same). That costs nothing, as
        the bytes are in memory already. A generator's first chunk is never held to find out:
        the stream may wait long before its second."""
        if isinstance(app_iter, (list, tuple)) and len(app_iter) == 1:
            self.length = len(app_iter[0])

    def write_whole(self, body: bytes) -> None:
        """The app's whole body, in one piece (a list of one bytestring, see :meth:`sized_by`)."""
        self.length = len(body)
        self.write(body)
        self.finish()

    @property
    def complete(self) -> bool:
        """Every byte of the declared or computed ``Content-Length`` was passed on."""
        return self.remaining == 0

    def finish(self) -> None:
        """The body is complete: send the last chunk, or the headers of an empty body."""
        if not self.headers_sent:
            # A HEAD whose app gave no body says nothing of the length a GET would have.
            self.send_headers(None if self.head else 0)
        if self.chunked:
            self.sink(b"0\r\n\r\n")
        elif self.remaining > 0 and not self.bodyless:
            self.keep_alive = False  # the app sent less than it declared: the framing is broken

    def _framed(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire after the headers: framed, cut to the declared length."""
        if self.bodyless:
            return b""
        self.body_bytes += len(data)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self.remaining >= 0:
            if len(data) > self.remaining:
                data = data[:self.remaining]
                self.keep_alive = False
            self.remaining -= len(data)
        return data

    def declared_length(self) -> int | None:
        """The app's ``Content-Length``, if it gave one."""
        for name, value in self.headers:
            if name.lower() == "content-length":
                try:
                    return int(value)
                except ValueError:
                    raise ResponseError(f"invalid Content-Length {value!r}") from None
        return None

    def send_headers(self, body_length: int | None) -> None:
        """Send the header block; ``body_length`` is the whole body's size when known."""
        self.sink(self._head(body_length))

    def _head(self, body_length: int | None) -> bytes:
        """The header block, marked sent; it chooses the framing of the body."""
        if self.status is None:
            raise ResponseError("the app did not call start_response")
        lines = [f"HTTP/1.1 {self.status}\r\n"]
        has_date = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                try:
                    self.remaining = int(value)
                except ValueError:
                    raise ResponseError(f"invalid Content-Length {value!r}") from None
                if body_length is not None and body_length < self.remaining \
                        and not self.bodyless:
                    self.keep_alive = False  # the body will fall short of what is declared
            elif lower == "date":
                has_date = True
            elif lower in HOP_BY_HOP:
                if lower == "connection" and value.lower() == "close":
                    self.keep_alive = False
                continue
            lines.append(f"{name}: {value}\r\n")
        if not has_date:
            lines.append(date_header.get())
        if self.remaining < 0 and not self.unframed:
            if body_length is not None:
                lines.append(f"Content-Length: {body_length}\r\n")
                self.remaining = body_length
            elif self.head:
                pass
            elif self.version == "1.1":
                self.chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 without a length: the close ends the body
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif self.version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        block = "".join(lines)
        # RFC 9110 5.5: CR, LF and NUL are never valid in a field (a bare CR splits headers for
        # some recipients). Refused before anything is marked sent, so the engine can answer 500.
        if block.count("\n") != len(lines) or block.count("\r") != len(lines) or "\0" in block:
            raise ResponseError("the status or a header contains CR, LF or NUL")
        try:
            data = block.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ResponseError(f"a header is not latin-1: {exc}") from None
        self.headers_sent = True
        return data


def error_response(status: int, reason: str, *, keep_alive: bool) -> bytes:
    """A complete small response the server writes itself (400s, 500)."""
    body = f"{status} {reason}\n".encode()
    connection = "keep-alive" if keep_alive else "close"
    return (f"HTTP/1.1 {status} {reason}\r\n{date_header.get()}Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n").encode("latin-1") + body
