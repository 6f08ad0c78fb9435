"""Bytes in, complete HTTP/1.x requests out. No I/O: feed it bytes, in any split, and collect.

``httptools`` (llhttp) does the parsing; this module enforces our limits, spools large bodies to
a temporary file, and turns every problem into an :class:`HTTPError` that knows its status.
"""

from __future__ import annotations

import io
import tempfile
from collections import deque
from dataclasses import dataclass
from typing import IO

import httptools


class HTTPError(Exception):
    """A request we refuse; ``status`` is the response to send before closing the connection."""

    status = 400
    reason = "Bad Request"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class BadRequest(HTTPError):
    pass


class PayloadTooLarge(HTTPError):
    status = 413
    reason = "Content Too Large"


class URITooLong(HTTPError):
    status = 414
    reason = "URI Too Long"


class HeadersTooLarge(HTTPError):
    status = 431
    reason = "Request Header Fields Too Large"


class ExpectationFailed(HTTPError):
    status = 417
    reason = "Expectation Failed"


class NotImplementedMethod(HTTPError):
    status = 501
    reason = "Not Implemented"


class UnsupportedTransferCoding(HTTPError):
    """RFC 9112 6.1: a transfer coding we cannot decode (llhttp only knows chunked)."""

    status = 501
    reason = "Not Implemented"


@dataclass(frozen=True)
class Limits:
    """Defaults as gunicorn's and nginx's: large enough for real clients, small enough to bound."""

    max_url: int = 8190
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body: int = 0  # 0: unlimited
    spool_threshold: int = 1024 * 1024  # bodies above this go to a temporary file


class Request:
    """One complete request, as the parser saw it."""

    __slots__ = ("method", "url", "version", "headers", "body", "keep_alive", "expect_continue")

    def __init__(self, method: bytes, url: bytes, version: str, headers: list[tuple[bytes, bytes]],
                 body: IO[bytes], keep_alive: bool, expect_continue: bool) -> None:
        self.method = method
        self.url = url
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue


class _Body:
    """A request body that stays in memory while small and moves to a temporary file past the
    spool threshold, so a large upload never sits in the worker's memory whole."""

    __slots__ = ("buffer", "size", "threshold", "limit")

    def __init__(self, threshold: int, limit: int) -> None:
        self.buffer: IO[bytes] = io.BytesIO()
        self.size = 0
        self.threshold = threshold
        self.limit = limit

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit and self.size > self.limit:
            raise PayloadTooLarge(f"body exceeds {self.limit} bytes")
        if self.size > self.threshold and isinstance(self.buffer, io.BytesIO):
            spooled = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the request from here on
            spooled.write(self.buffer.getbuffer())
            self.buffer = spooled
        self.buffer.write(data)

    def finish(self) -> IO[bytes]:
        self.buffer.seek(0)
        return self.buffer


class _IgnoredUpgrade:
    """The body of a request whose ``Upgrade`` we ignore, as RFC 9110 7.8 allows (we never switch
    protocols). llhttp stops at the end of such a head, so a parser of its own reads the body
    the head announced; the request is complete, and the connection closes after it."""

    def __init__(self, owner: RequestParser, request: Request,
                 framing: list[tuple[bytes, bytes]]) -> None:
        self.owner = owner
        self.request = request
        self.body = _Body(owner.limits.spool_threshold, owner.limits.max_body)
        self.done = False
        self.parser = httptools.HttpRequestParser(self)
        fields = b"".join(name + b": " + value + b"\r\n" for name, value in framing)
        self.parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              + fields + b"\r\n")

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.done:
                raise
            # Bytes after the body: not ours to read, as the connection closes after this request.

    def on_body(self, body: bytes) -> None:
        self.body.write(body)

    def on_message_complete(self) -> None:
        self.done = True
        owner = self.owner
        self.request.body = self.body.finish()
        owner.requests.append(self.request)
        owner.in_progress = False
        owner.upgraded = True


class RequestParser:
    """Feed bytes with :meth:`feed`; complete requests collect in :attr:`requests`.

    ``upgraded`` is set when a request asked to switch protocols: its bytes after the headers are
    not HTTP, so the connection serves that request and closes.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.requests: deque[Request] = deque()
        self.upgraded = False
        self.in_progress = False  # bytes of an unfinished request have arrived
        self.continue_wanted = False  # a client waits for "100 Continue" before its body
        self.headers_complete = False  # of the request in progress
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: _Body | None = None
        self._keep_alive = True
        self._expect_continue = False
        self._ignored_upgrade: _IgnoredUpgrade | None = None
        self._messages = 0  # requests begun, to tell one request head from the next
        self._head_fed = 0  # bytes of whole feeds that went into the current request head

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises :class:`HTTPError` for a request that must be refused."""
        in_head = self.in_progress and not self.headers_complete
        messages = self._messages
        try:
            if self._ignored_upgrade is not None:
                self._ignored_upgrade.feed(data)
                return
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self._upgrade(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HTTPError):
                raise cause from None
            raise BadRequest(str(exc)) from exc
        except httptools.HttpParserInvalidMethodError as exc:
            raise NotImplementedMethod(str(exc)) from exc
        except httptools.HttpParserError as exc:
            raise BadRequest(str(exc)) from exc
        if in_head and self.in_progress and not self.headers_complete and messages == self._messages:
            # httptools buffers a header line until it ends before on_header sees it, so an
            # endless line would grow without bound (and in quadratic time): count what went in.
            self._head_fed += len(data)
            if self._head_fed > self.limits.max_url + self.limits.max_header_bytes + 1024:
                raise HeadersTooLarge(f"request head larger than {self.limits.max_header_bytes} bytes")

    def _upgrade(self, rest: bytes) -> None:
        request = self.requests[-1]
        framing = [(name, value) for name, value in request.headers
                   if name.lower() in (b"content-length", b"transfer-encoding")]
        if request.method == b"CONNECT" or not framing:
            self.upgraded = True  # nothing after the head is HTTP: answer it, then close
            return
        self.requests.pop()  # not complete until its body is in
        self.in_progress = True
        self._ignored_upgrade = _IgnoredUpgrade(self, request, framing)
        self._ignored_upgrade.feed(rest)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_progress = True
        self.headers_complete = False
        self._messages += 1
        self._head_fed = 0
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = None
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url:
            raise URITooLong(f"request target longer than {self.limits.max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise HeadersTooLarge(f"headers larger than {self.limits.max_header_bytes} bytes")
        if self.headers_complete:
            # A trailer field after a chunked body. RFC 9110 6.5.1: never merged into the header
            # section (a trailer could otherwise add a second Host or a forged proxy header).
            return
        if len(self._headers) >= self.limits.max_headers:
            raise HeadersTooLarge(f"more than {self.limits.max_headers} header fields")
        # llhttp drops the whitespace before a field value but keeps what follows it, which
        # RFC 9112 5.1 says is not part of the value.
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        parser = self._parser
        version = parser.get_http_version()
        self._keep_alive = parser.should_keep_alive()
        hosts = 0
        expect: bytes | None = None
        codings: list[bytes] = []
        # Lengths first: a cheap filter, as most fields are none of these.
        for name, value in self._headers:
            size = len(name)
            if size == 4 and name.lower() == b"host":
                hosts += 1
            elif size == 6 and name.lower() == b"expect":
                expect = value
            elif size == 14 and name.lower() == b"content-length":
                # llhttp has checked the digits; refuse now rather than after max_body bytes,
                # and never invite the body with "100 Continue".
                if self.limits.max_body and int(value) > self.limits.max_body:
                    raise PayloadTooLarge(f"declared body exceeds {self.limits.max_body} bytes")
            elif size == 17 and name.lower() == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise BadRequest("an HTTP/1.1 request needs exactly one Host field (RFC 9112 3.2)")
        if codings:
            # RFC 9112 6.3: without chunked last the length is unknowable (400, as llhttp says);
            # 6.1: a coding before it that we cannot decode gets 501, not a still-coded body.
            if codings[-1] != b"chunked":
                raise BadRequest("chunked must be the final transfer coding")
            unknown = [c for c in codings[:-1] if c != b"chunked"]
            if unknown:
                raise UnsupportedTransferCoding(f"unsupported transfer coding {unknown[0]!r}")
            if version == "1.0":
                self._keep_alive = False  # RFC 9112 6.1: faulty framing, close after it
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise ExpectationFailed(f"unsupported Expect: {expect!r}")
            self._expect_continue = version == "1.1"
            self.continue_wanted = self._expect_continue

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            self._body = _Body(self.limits.spool_threshold, self.limits.max_body)
        self._body.write(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        body = self._body.finish() if self._body is not None else io.BytesIO()
        self.requests.append(Request(
            parser.get_method(), self._url, parser.get_http_version(), self._headers, body,
            self._keep_alive, self._expect_continue,
        ))
        self.in_progress = False
        self._body = None
