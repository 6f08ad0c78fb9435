"""Bytes in, complete HTTP/1.x requests out. No I/O: feed it bytes, in any split, and collect.

``httptools`` (llhttp) does the parsing; this module enforces our limits, spools large bodies to
a temporary file, and turns every problem into an :class:`HTTPError` that knows its status.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass
from typing import IO

import httptools

from .body import RequestBody
from .chunked import ChunkedBody
from .errors import (
    BadRequest,
    ExpectationFailed,
    HeadersTooLarge,
    HTTPError,
    NotImplementedMethod,
    PayloadTooLarge,
    ServerFault,
    UnsupportedTransferCoding,
    URITooLong,
    VersionNotSupported,
)
from .methods import KNOWN_METHODS, MAX_METHOD, check_token
from .target import split_target


@dataclass(frozen=True)
class Limits:
    """Defaults as gunicorn's and nginx's: large enough for real clients, small enough to bound."""

    max_url: int = 8190
    max_header_bytes: int = 64 * 1024
    max_field: int = 8190  # one header field, name and value (nginx's and gunicorn's 8 KiB)
    max_headers: int = 100
    max_body: int = 0  # 0: unlimited
    spool_threshold: int = 1024 * 1024  # bodies above this go to a temporary file


class Request:
    """One complete request, as the parser saw it; ``path``, ``query`` and ``authority`` are the
    target split by :func:`~flask_cluster.target.split_target`."""

    __slots__ = ("method", "url", "version", "headers", "body", "keep_alive", "expect_continue",
                 "path", "query", "authority")

    def __init__(self, method: bytes, url: bytes, version: str, headers: list[tuple[bytes, bytes]],
                 body: IO[bytes], keep_alive: bool, expect_continue: bool, path: bytes,
                 query: bytes, authority: bytes | None) -> None:
        self.method = method
        self.url = url
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.path = path
        self.query = query
        self.authority = authority


END_OF_HEAD = b"\r\n\r\n"  # llhttp takes no bare LF, so this ends every head
CRLF = b"\r\n"

# Where the parser is in the byte stream. llhttp reads the head and Content-Length bodies; we
# find where each head and body ends ourselves, so every request starts at a known byte: there
# an unknown method can be replaced, and a chunked body taken over by ChunkedBody.
_BETWEEN, _METHOD, _HEAD, _BODY, _CHUNKED, _UPGRADED = range(6)


class _IgnoredUpgrade:
    """The body of a request whose ``Upgrade`` we ignore, as RFC 9110 7.8 allows (we never switch
    protocols). llhttp stops at the end of such a head, so a parser of its own reads the body
    the head announced; the request is complete, and the connection closes after it."""

    def __init__(self, owner: RequestParser, request: Request,
                 framing: list[tuple[bytes, bytes]]) -> None:
        self.owner = owner
        self.request = request
        self.body = RequestBody(owner.limits.spool_threshold, owner.limits.max_body)
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
        # Read for every request, so kept at hand rather than looked up through ``limits``.
        self._max_field = limits.max_field + 4
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_head = limits.max_url + limits.max_header_bytes + 1024
        self.requests: deque[Request] = deque()
        self.upgraded = False
        self.in_progress = False  # bytes of an unfinished request have arrived
        self.continue_wanted = False  # a client waits for "100 Continue" before its body
        self.headers_complete = False  # of the request in progress
        self._parser = httptools.HttpRequestParser(self)
        self._state = _BETWEEN
        self._line = b""  # the start of a request line, held until its method is complete
        self._method = b""  # as the client sent it (llhttp may have been given GET instead)
        self._tail = b""  # the last bytes of the head so far, to find its end across feeds
        self._head_fed = 0
        self._body_left = 0  # Content-Length bytes still due
        self._chunked: ChunkedBody | None = None
        self._url = b""
        self._version = ""
        self._path = self._query = b""
        self._authority: bytes | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: RequestBody | None = None
        self._keep_alive = True
        self._expect_continue = False
        self._ignored_upgrade: _IgnoredUpgrade | None = None

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises :class:`HTTPError` for a request that must be refused (and
        :class:`ServerFault` for our own failure while reading it, such as a full disk)."""
        try:
            if self._state == _BETWEEN and data.find(END_OF_HEAD) == len(data) - 4:
                # The common case, one read holding exactly one head of a method llhttp knows:
                # straight to llhttp, as _feed_start and _feed_head would end up doing.
                space = data.find(b" ", 0, MAX_METHOD + 1)
                if space > 0 and (method := data[:space]) in KNOWN_METHODS:
                    self._method = method
                    self.in_progress = True
                    self.headers_complete = False
                    self._state = _HEAD
                    try:
                        self._parser.feed_data(data)
                    except httptools.HttpParserUpgrade as exc:
                        self._upgrade(data[exc.args[0]:])
                    return
            while data:
                state = self._state
                if state <= _METHOD:  # a request starts (the common case) or its method goes on
                    data = self._feed_start(data)
                elif state == _HEAD:
                    data = self._feed_head(data)
                elif state == _BODY:
                    data = self._feed_body(data)
                elif state == _CHUNKED:
                    data = self._feed_chunked(data)
                else:
                    data = self._feed_upgraded(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HTTPError):
                raise cause from None
            if isinstance(cause, OSError):
                raise ServerFault(f"cannot store the request body: {cause}") from cause
            raise BadRequest(str(exc)) from exc
        except httptools.HttpParserInvalidMethodError as exc:
            raise NotImplementedMethod(str(exc)) from exc
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":  # a well-formed version with major > 1
                raise VersionNotSupported(str(exc)) from exc
            raise BadRequest(str(exc)) from exc
        except OSError as exc:  # spooling a body: the disk is ours, not the client's problem
            raise ServerFault(f"cannot store the request body: {exc}") from exc

    def _feed_body(self, data: bytes) -> bytes:
        part, rest = data[:self._body_left], data[self._body_left:]
        self._body_left -= len(part)
        self._to_llhttp(part, rest)
        return rest

    def _feed_chunked(self, data: bytes) -> bytes:
        assert self._chunked is not None
        rest = self._chunked.feed(data)
        if self._chunked.done:
            self.on_message_complete()
        return rest

    def _feed_upgraded(self, data: bytes) -> bytes:
        if self._ignored_upgrade is not None:
            self._ignored_upgrade.feed(data)
        return b""  # after an upgrade, nothing is HTTP any more

    def _feed_start(self, data: bytes) -> bytes:
        """At the start of a request: hold bytes until the method is whole, then give llhttp the
        head, with ``GET`` standing in for a method llhttp does not know."""
        if self._state == _BETWEEN:
            if data[0] in CRLF:
                data = data.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request line
                if not data:
                    return b""
            self.in_progress = True
            self.headers_complete = False
        if self._line:
            line = self._line + data
            self._line = b""
        else:
            line = data
        space = line.find(b" ", 0, MAX_METHOD + 1)
        if space < 0:
            check_token(line[:MAX_METHOD])  # at once: a TLS hello never has a space
            if len(line) > MAX_METHOD:
                raise NotImplementedMethod(f"method longer than {MAX_METHOD} bytes")
            self._line = line
            self._state = _METHOD
            return b""
        method = self._method = line[:space]
        if method not in KNOWN_METHODS:
            check_token(method)
            line = b"GET" + line[space:]
        self._state = _HEAD  # _tail and _head_fed are empty: _feed_head leaves them so
        return self._feed_head(line)

    def _feed_head(self, data: bytes) -> bytes:
        """Give llhttp the head up to its empty line; return what follows it."""
        tail = self._tail
        held = tail + data if tail else data
        end = held.find(END_OF_HEAD)
        if end < 0:
            self._head_fed += len(data)
            # llhttp buffers a header line until it ends before on_header sees it, so an endless
            # line would grow without bound (and in quadratic time): count what went in.
            if self._head_fed > self._max_head:
                raise HeadersTooLarge(f"request head larger than {self.limits.max_header_bytes} bytes")
            self._tail = held[-3:]
            self._to_llhttp(data, b"")
            return b""
        if tail:
            self._tail = b""
        self._head_fed = 0
        cut = end + len(END_OF_HEAD) - len(tail)
        if cut == len(data):  # the common case: the feed ends with the head
            self._to_llhttp(data, b"")
            return b""
        head, rest = data[:cut], data[cut:]
        self._to_llhttp(head, rest)
        return b"" if self._state == _UPGRADED else rest

    def _to_llhttp(self, data: bytes, rest: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:] + rest)

    def _upgrade(self, rest: bytes) -> None:
        self._state = _UPGRADED
        request = self.requests[-1]
        framing = [(name, value) for name, value in request.headers
                   if name.lower() in (b"content-length", b"transfer-encoding")]
        if not framing:
            self.upgraded = True  # nothing after the head is HTTP: answer it, then close
            return
        self.requests.pop()  # not complete until its body is in
        self.in_progress = True
        self._ignored_upgrade = _IgnoredUpgrade(self, request, framing)
        self._ignored_upgrade.feed(rest)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url:
            raise URITooLong(f"request target longer than {self.limits.max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        if size > self._max_field:
            raise HeadersTooLarge(f"a header field is larger than {self.limits.max_field} bytes")
        header_bytes = self._header_bytes = self._header_bytes + size
        if header_bytes > self._max_header_bytes:
            raise HeadersTooLarge(f"headers larger than {self.limits.max_header_bytes} bytes")
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise HeadersTooLarge(f"more than {self.limits.max_headers} header fields")
        # llhttp drops the whitespace before a field value but keeps what follows it, which
        # RFC 9112 5.1 says is not part of the value.
        headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.headers_complete = True
        parser = self._parser
        version = self._version = parser.get_http_version()
        if version != "1.1" and version != "1.0":  # llhttp takes 2.0, and 0.9 for no version
            if self._method == b"PRI":
                raise BadRequest("an HTTP/2 connection preface: this server speaks HTTP/1.1")
            raise VersionNotSupported(f"HTTP/{version} is not HTTP/1.x")
        url = self._url
        if url[:1] == b"/" and self._method != b"CONNECT":  # origin form: the common case
            self._path, _, self._query = url.partition(b"?")
            self._authority = None
        else:
            self._path, self._query, self._authority = split_target(self._method, url)
        self._keep_alive = parser.should_keep_alive()
        hosts = 0
        expect: bytes | None = None
        codings: list[bytes] = []
        length = 0
        # Lengths first: a cheap filter, as most fields are none of these.
        for name, value in self._headers:
            size = len(name)
            if size == 4 and name.lower() == b"host":
                hosts += 1
            elif size == 6 and name.lower() == b"expect":
                expect = value
            elif size == 14 and name.lower() == b"content-length":
                # llhttp has checked the digits (and refuses a second one); refuse now rather
                # than after max_body bytes, and never invite the body with "100 Continue".
                length = int(value)
                if self.limits.max_body and length > self.limits.max_body:
                    raise PayloadTooLarge(f"declared body exceeds {self.limits.max_body} bytes")
            elif size == 17 and name.lower() == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise BadRequest("an HTTP/1.1 request needs exactly one Host field (RFC 9112 3.2)")
        self._state = _BETWEEN  # llhttp completes a request without a body at once
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
            self._body = self._new_body()
            self._chunked = ChunkedBody(self._body, self.limits.max_header_bytes)
            self._state = _CHUNKED
        elif length:
            self._body_left = length
            self._state = _BODY
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise ExpectationFailed(f"unsupported Expect: {expect!r}")
            self._expect_continue = version == "1.1"
            self.continue_wanted = self._expect_continue

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            self._body = self._new_body()
        self._body.write(body)

    def _new_body(self) -> RequestBody:
        return RequestBody(self.limits.spool_threshold, self.limits.max_body)

    def on_message_complete(self) -> None:
        """From llhttp at the end of a request without a chunked body (it is never given one:
        :class:`ChunkedBody` reads those), and from :meth:`_feed_chunked`."""
        body = self._body.finish() if self._body is not None else io.BytesIO()
        self.requests.append(Request(
            self._method, self._url, self._version, self._headers, body, self._keep_alive,
            self._expect_continue, self._path, self._query, self._authority,
        ))
        self.in_progress = False
        # Ready for the next request here rather than in an on_message_begin callback, which
        # would cost a call from llhttp per request.
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = None
        self._expect_continue = False
        if self._chunked is not None:
            # llhttp was left expecting the chunked body we read instead: start it afresh.
            self._chunked = None
            self._parser = httptools.HttpRequestParser(self)
        self._state = _BETWEEN
