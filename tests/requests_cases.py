"""Raw HTTP/1.x requests and what :class:`flask_cluster.http.parser.RequestParser` must make of them.

In the spirit of gunicorn's ``tests/requests/{valid,invalid}``: each valid case is the bytes a
client sends and the requests the parser must produce; each invalid case is the bytes and the
status the server must answer with. ``test_conformance.py`` feeds them whole and split.

Cases marked ``BUG`` describe what RFC 9110/9112 require where the parser does otherwise today;
the tests mark them ``xfail(strict=True)`` until the fix lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Expected:
    method: bytes
    url: bytes
    version: str = "1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True
    expect_continue: bool = False


@dataclass(frozen=True)
class Valid:
    name: str
    raw: bytes
    requests: list[Expected]
    upgraded: bool | None = False  # the last request switched protocols (None: either will do)
    bug: str | None = None


@dataclass(frozen=True)
class Invalid:
    name: str
    raw: bytes
    status: int
    bug: str | None = None


HOST = (b"Host", b"example.com")


def _chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


VALID: list[Valid] = [
    Valid("get", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST])]),
    Valid("get-query-and-escapes",
          b"GET /a%20b/c?x=1&y=%2F#frag HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"GET", b"/a%20b/c?x=1&y=%2F#frag", headers=[HOST])]),
    Valid("header-case-and-order-kept",
          b"GET / HTTP/1.1\r\nHost: example.com\r\nX-One: 1\r\nx-two: 2\r\nACCEPT: a\r\n"
          b"Accept: b\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST, (b"X-One", b"1"), (b"x-two", b"2"),
                                           (b"ACCEPT", b"a"), (b"Accept", b"b")])]),
    Valid("leading-whitespace-of-value-dropped",
          b"GET / HTTP/1.1\r\nHost: example.com\r\nA:value\r\nB: \t value\r\nC:\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST, (b"A", b"value"), (b"B", b"value"),
                                           (b"C", b"")])]),
    Valid("inner-whitespace-tab-and-obs-text-kept",
          b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: a \t b\r\nX-B: caf\xe9\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST, (b"X-A", b"a \t b"), (b"X-B", b"caf\xe9")])]),
    Valid("trailing-whitespace-of-value-dropped",
          b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: value \t \r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST, (b"X-A", b"value")])]),
    Valid("post-content-length",
          b"POST /submit HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\n"
          b"Content-Length: 11\r\n\r\nhello world",
          [Expected(b"POST", b"/submit", headers=[HOST, (b"Content-Type", b"text/plain"),
                                                  (b"Content-Length", b"11")],
                    body=b"hello world")]),
    Valid("content-length-zero",
          b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n",
          [Expected(b"POST", b"/", headers=[HOST, (b"Content-Length", b"0")])]),
    Valid("content-length-leading-zeros",
          b"PUT / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 003\r\n\r\nabc",
          [Expected(b"PUT", b"/", headers=[HOST, (b"Content-Length", b"003")], body=b"abc")]),
    Valid("post-without-length-has-no-body",
          b"POST / HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"POST", b"/", headers=[HOST])]),
    Valid("get-with-body-then-next-request",
          b"GET /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"
          b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"GET", b"/a", headers=[HOST, (b"Content-Length", b"3")], body=b"abc"),
           Expected(b"GET", b"/b", headers=[HOST])]),
    Valid("chunked",
          b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
          + _chunked(b"hello", b" ", b"world"),
          [Expected(b"POST", b"/", headers=[HOST, (b"Transfer-Encoding", b"chunked")],
                    body=b"hello world")]),
    Valid("chunked-hex-sizes-and-extensions",
          b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"00A;name=value;flag\r\n0123456789\r\n"
          b"1;q=\"quoted;\\\"string\"\r\nX\r\n"
          b"0;last\r\n\r\n",
          [Expected(b"POST", b"/", headers=[HOST, (b"Transfer-Encoding", b"chunked")],
                    body=b"0123456789X")]),
    Valid("chunked-trailers-consumed",
          b"POST /t HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
          b"Trailer: X-Checksum\r\n\r\n"
          b"4\r\nabcd\r\n0\r\nX-Checksum: 1234\r\n\r\n"
          b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"POST", b"/t", headers=[HOST, (b"Transfer-Encoding", b"chunked"),
                                             (b"Trailer", b"X-Checksum")], body=b"abcd"),
           Expected(b"GET", b"/next", headers=[HOST])]),  # RFC 9110 6.5.1: trailers not merged
    # The same, as an attack: a trailer must not slip a second Host past the "exactly one Host"
    # rule (the app would see HTTP_HOST "example.com,evil.example").
    Valid("trailer-cannot-add-a-host",
          b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"0\r\nHost: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
          [Expected(b"POST", b"/", headers=[HOST, (b"Transfer-Encoding", b"chunked")])]),
    Valid("transfer-encoding-any-case",
          b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: Chunked\r\n\r\n"
          + _chunked(b"abc"),
          [Expected(b"POST", b"/", headers=[HOST, (b"Transfer-Encoding", b"Chunked")], body=b"abc")]),
    Valid("empty-host-is-valid",  # RFC 9112 3.2: what a client sends without an authority
          b"GET / HTTP/1.1\r\nHost:\r\n\r\n", [Expected(b"GET", b"/", headers=[(b"Host", b"")])]),
    Valid("http10-without-host",
          b"GET / HTTP/1.0\r\n\r\n", [Expected(b"GET", b"/", version="1.0", keep_alive=False)]),
    Valid("http10-closes",
          b"GET /old HTTP/1.0\r\n\r\n",
          [Expected(b"GET", b"/old", version="1.0", keep_alive=False)]),
    Valid("http10-keep-alive",
          b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
          [Expected(b"GET", b"/", version="1.0", headers=[(b"Connection", b"keep-alive")]),
           Expected(b"GET", b"/2", version="1.0", keep_alive=False)]),
    Valid("http11-connection-close",
          b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST, (b"Connection", b"close")], keep_alive=False)]),
    Valid("http11-connection-close-among-tokens",
          b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, Close\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST, (b"Connection", b"keep-alive, Close")],
                    keep_alive=False)]),
    Valid("pipelined",
          b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
          b"POST /2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nbody"
          b"DELETE /3 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
          [Expected(b"GET", b"/1", headers=[HOST]),
           Expected(b"POST", b"/2", headers=[HOST, (b"Content-Length", b"4")], body=b"body"),
           Expected(b"DELETE", b"/3", headers=[HOST, (b"Connection", b"close")],
                    keep_alive=False)]),
    Valid("expect-100-continue",
          b"PUT /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n"
          b"Expect: 100-continue\r\n\r\nok",
          [Expected(b"PUT", b"/up", headers=[HOST, (b"Content-Length", b"2"),
                                             (b"Expect", b"100-continue")],
                    body=b"ok", expect_continue=True)]),
    Valid("expect-100-continue-any-case",
          b"PUT /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n"
          b"Expect: 100-Continue\r\n\r\nok",
          [Expected(b"PUT", b"/up", headers=[HOST, (b"Content-Length", b"2"),
                                             (b"Expect", b"100-Continue")],
                    body=b"ok", expect_continue=True)]),
    Valid("expect-100-continue-ignored-in-http10",
          b"PUT /up HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok",
          [Expected(b"PUT", b"/up", version="1.0",
                    headers=[(b"Content-Length", b"2"), (b"Expect", b"100-continue")],
                    body=b"ok", keep_alive=False)]),
    Valid("leading-empty-lines-ignored",  # RFC 9112 2.2
          b"\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"GET", b"/", headers=[HOST])]),
    Valid("asterisk-form",
          b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"OPTIONS", b"*", headers=[HOST])]),
    Valid("absolute-form",
          b"GET http://example.com/p?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"GET", b"http://example.com/p?q=1", headers=[HOST])]),
    Valid("webdav-method",
          b"PROPFIND /dav HTTP/1.1\r\nHost: example.com\r\nDepth: 1\r\n\r\n",
          [Expected(b"PROPFIND", b"/dav", headers=[HOST, (b"Depth", b"1")])]),
    # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; the server
    # may process it but must close the connection afterwards.
    Valid("http10-transfer-encoding-closes",
          b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(b"abc"),
          [Expected(b"POST", b"/", version="1.0", headers=[(b"Transfer-Encoding", b"chunked")],
                    body=b"abc", keep_alive=False)]),
    # RFC 9110 9.1: any token is a method; the app answers one it does not know (Flask: 405).
    Valid("unknown-method",
          b"BREW /pot HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"BREW", b"/pot", headers=[HOST])]),
    Valid("method-outside-llhttps-list",
          b"-BLARGH /x HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"-BLARGH", b"/x", headers=[HOST])]),
    Valid("lowercase-method",  # methods are case-sensitive: "get" is not GET
          b"get / HTTP/1.1\r\nHost: example.com\r\n\r\n", [Expected(b"get", b"/", headers=[HOST])]),
    Valid("unknown-method-pipelined-after-a-body",
          b"POST /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"
          b"PURGE-ALL /b HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"POST", b"/a", headers=[HOST, (b"Content-Length", b"3")], body=b"abc"),
           Expected(b"PURGE-ALL", b"/b", headers=[HOST])]),
    # RFC 9112 7.1.1: whitespace (BWS) around chunk extensions, which llhttp refuses.
    Valid("chunk-extension-whitespace",
          b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"5; name=value\r\nhello\r\n1 ;name\r\n!\r\n2\t; a = \"b c\"\r\n!!\r\n0\r\n\r\n"
          b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n",
          [Expected(b"POST", b"/", headers=[HOST, (b"Transfer-Encoding", b"chunked")],
                    body=b"hello!!!"),
           Expected(b"GET", b"/next", headers=[HOST])]),
    Valid("absolute-form-https-with-port",
          b"GET https://example.com:8443/p HTTP/1.1\r\nHost: other.example\r\n\r\n",
          [Expected(b"GET", b"https://example.com:8443/p", headers=[(b"Host", b"other.example")])]),
    Valid("upgrade-websocket",
          b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n"
          b"Upgrade: websocket\r\n\r\n\x81\x80",
          [Expected(b"GET", b"/ws", headers=[HOST, (b"Connection", b"Upgrade"),
                                             (b"Upgrade", b"websocket")])],
          upgraded=True),
    # A server may ignore Upgrade (RFC 9110 7.8) and we never switch protocols, so the request
    # must be served whole. Java's RestClient sends "Upgrade: h2c" with every POST.
    Valid("upgrade-h2c-with-body",
          b"POST /api HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n"
          b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 5\r\n\r\nhello",
          [Expected(b"POST", b"/api",
                    headers=[HOST, (b"Connection", b"Upgrade, HTTP2-Settings"),
                             (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
                             (b"Content-Length", b"5")],
                    body=b"hello")],
          upgraded=None),  # closing after it or keeping the connection: both are fine
]


_POST = b"POST / HTTP/1.1\r\nHost: example.com\r\n"
_GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n"

INVALID: list[Invalid] = [
    # Framing: the request-smuggling classics (RFC 9112 6.1, 6.3).
    Invalid("content-length-and-transfer-encoding",
            _POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    Invalid("transfer-encoding-and-content-length",
            _POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    Invalid("content-length-in-trailer",
            _POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 9\r\n\r\n",
            400),
    Invalid("duplicate-content-length-same", _POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400),
    Invalid("duplicate-content-length-different",
            _POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    Invalid("content-length-list", _POST + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    Invalid("content-length-negative", _POST + b"Content-Length: -1\r\n\r\n", 400),
    Invalid("content-length-plus", _POST + b"Content-Length: +3\r\n\r\nabc", 400),
    Invalid("content-length-hex", _POST + b"Content-Length: 0x3\r\n\r\nabc", 400),
    Invalid("content-length-inner-space", _POST + b"Content-Length: 1 2\r\n\r\n", 400),
    Invalid("content-length-empty", _POST + b"Content-Length: \r\n\r\n", 400),
    Invalid("content-length-overflow", _POST + b"Content-Length: 99999999999999999999999\r\n\r\n",
            400),
    Invalid("transfer-encoding-chunked-not-last",
            _POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    Invalid("transfer-encoding-without-chunked", _POST + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    Invalid("transfer-encoding-empty", _POST + b"Transfer-Encoding: \r\n\r\nabc", 400),
    Invalid("transfer-encoding-trailing-comma", _POST + b"Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
            400),
    # RFC 9112 6.1: chunked last, but a coding before it we cannot decode: 501.
    Invalid("transfer-encoding-gzip-then-chunked",
            _POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    Invalid("transfer-encoding-gzip-then-chunked-lines",
            _POST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    Invalid("transfer-encoding-identity", _POST + b"Transfer-Encoding: identity\r\n\r\nabc", 400),
    Invalid("transfer-encoding-xchunked", _POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    Invalid("transfer-encoding-chunked-twice",
            _POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    Invalid("transfer-encoding-vertical-tab",
            _POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    Invalid("transfer-encoding-space-before-colon",
            _POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    Invalid("chunk-size-not-hex", _POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    Invalid("chunk-size-overflow",
            _POST + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", 400),
    Invalid("chunk-size-trailing-space",
            _POST + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    Invalid("chunk-data-longer-than-size",
            _POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    Invalid("chunk-bare-lf", _POST + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    Invalid("chunk-extension-bare-lf",
            _POST + b"Transfer-Encoding: chunked\r\n\r\n3;a\nabc\r\n0\r\n\r\n", 400),
    Invalid("chunk-extension-control-char",
            _POST + b"Transfer-Encoding: chunked\r\n\r\n3;\x01\r\nabc\r\n0\r\n\r\n", 400),
    # Field syntax (RFC 9112 5).
    Invalid("space-before-colon", b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n", 400),
    Invalid("space-in-name", _GET + b"X Y: 1\r\n\r\n", 400),
    Invalid("empty-name", _GET + b": 1\r\n\r\n", 400),
    Invalid("non-token-name", _GET + b"X(Y): 1\r\n\r\n", 400),
    Invalid("non-ascii-name", _GET + b"X\xffY: 1\r\n\r\n", 400),
    Invalid("no-colon", _GET + b"X-Y 1\r\n\r\n", 400),
    Invalid("obs-fold", _GET + b"X-Y: a\r\n b\r\n\r\n", 400),
    Invalid("whitespace-before-first-field", b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n", 400),
    Invalid("nul-in-value", _GET + b"X-Y: a\x00b\r\n\r\n", 400),
    Invalid("control-char-in-value", _GET + b"X-Y: a\x01b\r\n\r\n", 400),
    Invalid("del-in-value", _GET + b"X-Y: a\x7fb\r\n\r\n", 400),
    Invalid("bare-cr-in-value", _GET + b"X-Y: a\rX-Z: b\r\n\r\n", 400),
    Invalid("bare-lf-ends-field", _GET + b"X-Y: a\nX-Z: b\r\n\r\n", 400),
    Invalid("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", 400),
    Invalid("bare-cr-ends-request-line", b"GET / HTTP/1.1\rHost: example.com\r\n\r\n", 400),
    # Host (RFC 9112 3.2: "MUST respond with a 400").
    Invalid("http11-without-host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    Invalid("two-hosts", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    Invalid("two-hosts-http10", b"GET / HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            400),
    # Request line.
    Invalid("space-in-target", b"GET /a b HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("del-in-target", b"GET /a\x7fb HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("non-ascii-target", b"GET /caf\xe9 HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    # llhttp refuses minor versions above 1 with the same error as major versions above 1.
    Invalid("version-1.2", b"GET / HTTP/1.2\r\nHost: example.com\r\n\r\n", 505),
    Invalid("version-3.0", b"GET / HTTP/3.0\r\nHost: example.com\r\n\r\n", 505),
    # HTTP/0.9 had no version and no headers; llhttp reads both spellings as 0.9.
    Invalid("http09-request-line", b"GET /\r\n\r\n", 505),
    Invalid("http09-version", b"GET / HTTP/0.9\r\nHost: example.com\r\n\r\n", 505),
    Invalid("http20-request-line", b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n", 505),
    Invalid("version-garbage", b"GET / HTTP/x.y\r\nHost: example.com\r\n\r\n", 400),
    Invalid("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # RFC 9110 9.1: a method is a token; anything else is a malformed request line.
    Invalid("tab-after-method", b"GET\t/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    Invalid("method-with-slash", b"GE/T / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("method-too-long", b"A" * 40 + b" / HTTP/1.1\r\nHost: example.com\r\n\r\n", 501),
    # RFC 9112 3.2: each target form only where it belongs.
    Invalid("connect-authority-form", b"CONNECT example.com:443 HTTP/1.1\r\n"
            b"Host: example.com:443\r\n\r\n\x16\x03\x01", 501),  # we do not tunnel
    Invalid("connect-without-port", b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
            400),
    Invalid("connect-origin-form", b"CONNECT / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("asterisk-form-with-get", b"GET * HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    Invalid("authority-form-with-get", b"GET example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
            400),
    Invalid("absolute-form-port-out-of-range", b"GET http://a:99999/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Invalid("absolute-form-open-ip-literal", b"GET http://[::1/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Invalid("absolute-form-empty-host", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Invalid("absolute-form-other-scheme", b"PUT s://]ufd/: HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Invalid("absolute-form-userinfo", b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # A field over the per-field limit (8190 bytes by default, as nginx and gunicorn).
    Invalid("header-field-too-long", _GET + b"X-Big: " + b"a" * 8200 + b"\r\n\r\n", 431),
    # Expectations (RFC 9110 10.1.1).
    Invalid("unknown-expectation", _POST + b"Expect: teapot\r\nContent-Length: 0\r\n\r\n", 417),
]
