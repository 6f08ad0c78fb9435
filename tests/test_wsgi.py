"""The WSGI side: ``build_environ`` (PEP 3333) and ``Response``, the serializer behind
``start_response``. No sockets: requests come from the real parser, bytes go to a list."""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from wsgiref.validate import check_environ

import pytest

from flask_cluster.http import wsgi
from flask_cluster.http.parser import Limits, Request, RequestParser
from flask_cluster.http.wsgi import (
    FileWrapper,
    Response,
    ResponseError,
    base_environ,
    build_environ,
    environ_key,
    error_response,
)

BASE = base_environ("server.example", "8080", scheme="http", multithread=False)


def parse(raw: bytes, limits: Limits | None = None) -> Request:
    parser = RequestParser(limits or Limits())
    parser.feed(raw)
    [request] = parser.requests
    return request


def environ_for(raw: bytes, limits: Limits | None = None) -> dict[str, Any]:
    return build_environ(parse(raw, limits), BASE, "192.0.2.7", "54321")


def get(path: bytes = b"/", headers: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"GET %b HTTP/%b\r\nHost: server.example\r\n%b\r\n" % (path, version, headers)


# -- environ ------------------------------------------------------------------------------------


def test_environ_is_complete_per_pep3333() -> None:
    environ = environ_for(
        b"POST /app/items?sort=asc&page=2 HTTP/1.1\r\nHost: server.example:8080\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nUser-Agent: test/1.0\r\n"
        b"X-Request-Id: abc\r\n\r\n{}")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_environ(environ)  # wsgiref's own checks, its warnings as errors
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/app/items"
    assert environ["QUERY_STRING"] == "sort=asc&page=2"
    assert environ["RAW_URI"] == environ["REQUEST_URI"] == "/app/items?sort=asc&page=2"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "2"
    assert environ["SERVER_NAME"] == "server.example"
    assert environ["SERVER_PORT"] == "8080"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "192.0.2.7"
    assert environ["REMOTE_PORT"] == "54321"
    assert environ["HTTP_HOST"] == "server.example:8080"
    assert environ["HTTP_USER_AGENT"] == "test/1.0"
    assert environ["HTTP_X_REQUEST_ID"] == "abc"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input"].read(2) == b"{}"
    assert environ["wsgi.errors"] is sys.stderr
    assert environ["wsgi.multithread"] is False
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.file_wrapper"] is FileWrapper
    for key, value in environ.items():
        if "." not in key:
            assert type(value) is str, key  # PEP 3333: native strings


def test_base_environ_describes_the_worker() -> None:
    threaded = base_environ("0.0.0.0", "443", scheme="https", multithread=True)

    assert threaded["wsgi.url_scheme"] == "https"
    assert threaded["wsgi.multithread"] is True
    assert threaded["SERVER_SOFTWARE"]


def test_environ_does_not_leak_into_the_base() -> None:
    before = dict(BASE)

    environ_for(get(headers=b"X-A: 1\r\n"))

    assert before == BASE


def test_content_type_and_length_absent_when_not_sent() -> None:
    environ = environ_for(get())

    assert "CONTENT_TYPE" not in environ
    assert "CONTENT_LENGTH" not in environ
    assert environ["QUERY_STRING"] == ""


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"/a%20b", "/a b", ""),
    (b"/caf%C3%A9?x=%C3%A9", "/caf\xc3\xa9", "x=%C3%A9"),  # bytes as latin-1; query not decoded
    (b"/a%2Fb", "/a/b", ""),
    (b"/100%25", "/100%", ""),
    (b"/?", "/", ""),
    (b"/p?a=1?b=2", "/p", "a=1?b=2"),
    (b"http://server.example/abs?q=1", "/abs", "q=1"),
    (b"http://server.example", "/", ""),
    (b"*", "*", ""),
])
def test_path_and_query(target: bytes, path: str, query: str) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    environ = environ_for(b"%b %b HTTP/1.1\r\nHost: server.example\r\n\r\n" % (method, target))

    assert environ["PATH_INFO"] == path
    assert environ["QUERY_STRING"] == query
    assert environ["RAW_URI"] == target.decode("latin-1")


def test_http10_protocol() -> None:
    assert environ_for(get(version=b"1.0"))["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_duplicate_headers_are_joined() -> None:
    environ = environ_for(get(headers=b"Accept: text/html\r\naccept: application/json\r\n"
                                      b"Cookie: a=1\r\nCookie: b=2\r\n"
                                      b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"))

    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"  # RFC 6265 5.4: cookies join with "; "
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1,10.0.0.2"


def test_headers_with_underscores_are_dropped() -> None:
    environ = environ_for(get(headers=b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1\r\n"
                                      b"Content_Length: 99\r\n"))

    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"  # the impostor cannot pose as it
    assert "CONTENT_LENGTH" not in environ
    assert environ_key(b"X_Forwarded_For") is None
    assert environ_key(b"content-type") == "CONTENT_TYPE"
    assert environ_key(b"x-custom-header") == "HTTP_X_CUSTOM_HEADER"


def test_header_values_are_latin1() -> None:
    environ = environ_for(get(headers=b"X-Name: caf\xe9\r\n"))

    assert environ["HTTP_X_NAME"] == "caf\xe9"


# -- wsgi.input ---------------------------------------------------------------------------------


BODY = b"first line\nsecond line\n\nlast, no newline"


@pytest.fixture(params=["memory", "spooled"])
def wsgi_input(request: pytest.FixtureRequest) -> Any:
    limits = Limits(spool_threshold=10 if request.param == "spooled" else 1 << 20)
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
    stream = environ_for(raw, limits)["wsgi.input"]
    assert isinstance(stream, io.BytesIO) == (request.param == "memory")
    yield stream
    stream.close()


def test_input_read(wsgi_input: Any) -> None:
    assert wsgi_input.read(5) == b"first"
    assert wsgi_input.read(6) == b" line\n"
    assert wsgi_input.read(1000) == BODY[11:]
    assert wsgi_input.read(1) == b""  # at the end, not blocking


def test_input_read_without_size_reads_all(wsgi_input: Any) -> None:
    assert wsgi_input.read() == BODY
    assert wsgi_input.read(-1) == b""


def test_input_readline(wsgi_input: Any) -> None:
    assert wsgi_input.readline() == b"first line\n"
    assert wsgi_input.readline(3) == b"sec"
    assert wsgi_input.readline() == b"ond line\n"
    assert wsgi_input.readline() == b"\n"
    assert wsgi_input.readline() == b"last, no newline"
    assert wsgi_input.readline() == b""


def test_input_readlines(wsgi_input: Any) -> None:
    assert wsgi_input.readlines() == [b"first line\n", b"second line\n", b"\n", b"last, no newline"]


def test_input_iteration(wsgi_input: Any) -> None:
    assert list(wsgi_input) == BODY.splitlines(keepends=True)


# -- Response -----------------------------------------------------------------------------------


class Wire:
    """What a Response writes, split back into status line, headers and body."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def raw(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def head(self) -> list[str]:
        head, _, _ = self.raw.partition(b"\r\n\r\n")
        return head.decode("latin-1").split("\r\n")

    @property
    def status_line(self) -> str:
        return self.head[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name, value) for name, _, value in
                (line.partition(": ") for line in self.head[1:])]

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]


def respond(raw: bytes, status: str, headers: list[tuple[str, str]],
            body: Iterable[bytes]) -> tuple[Wire, Response]:
    """What the engine does with an app that returns ``body``."""
    wire = Wire()
    response = Response(wire, parse(raw))
    write = response.start_response(status, headers)
    response.sized_by(body)
    for chunk in body:
        write(chunk)
    response.finish()
    return wire, response


TEXT = [("Content-Type", "text/plain")]


def test_declared_content_length_passes_through() -> None:
    wire, response = respond(get(), "200 OK", [*TEXT, ("Content-Length", "11")], [b"hello", b" world"])

    assert wire.status_line == "HTTP/1.1 200 OK"
    assert wire.header("Content-Length") == "11"
    assert wire.header("Transfer-Encoding") is None
    assert wire.body == b"hello world"
    assert response.keep_alive
    assert response.body_bytes == 11


def test_one_chunk_body_gets_a_computed_length() -> None:
    wire, response = respond(get(), "200 OK", TEXT, [b"hello world"])

    assert wire.header("Content-Length") == "11"
    assert wire.header("Transfer-Encoding") is None
    assert wire.body == b"hello world"
    assert response.keep_alive


def test_empty_body_gets_length_zero() -> None:
    wire, response = respond(get(), "200 OK", TEXT, [])

    assert wire.header("Content-Length") == "0"
    assert wire.body == b""
    assert response.keep_alive


def test_empty_chunks_are_not_framed() -> None:
    wire, _ = respond(get(), "200 OK", TEXT, [b"", b"one", b"", b"two", b""])

    assert wire.body == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"


def test_multi_chunk_body_is_chunked_in_http11() -> None:
    wire, response = respond(get(), "200 OK", TEXT, [b"hello", b" ", b"world!"])

    assert wire.header("Transfer-Encoding") == "chunked"
    assert wire.header("Content-Length") is None
    assert wire.body == b"5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n"
    assert response.keep_alive


def test_multi_chunk_body_is_close_delimited_in_http10() -> None:
    wire, response = respond(get(version=b"1.0", headers=b"Connection: keep-alive\r\n"), "200 OK",
                             TEXT, [b"hello", b" world"])

    assert wire.header("Transfer-Encoding") is None
    assert wire.header("Content-Length") is None
    assert wire.header("Connection") == "close"
    assert wire.body == b"hello world"
    assert not response.keep_alive


def test_http10_keep_alive_with_known_length() -> None:
    wire, response = respond(get(version=b"1.0", headers=b"Connection: keep-alive\r\n"), "200 OK",
                             TEXT, [b"hello"])

    assert wire.header("Content-Length") == "5"
    assert wire.header("Connection") == "keep-alive"
    assert response.keep_alive


def test_http10_without_keep_alive_closes() -> None:
    wire, response = respond(get(version=b"1.0"), "200 OK", TEXT, [b"hello"])

    assert wire.header("Connection") == "close"
    assert not response.keep_alive


def test_client_connection_close_is_honoured() -> None:
    wire, response = respond(get(headers=b"Connection: close\r\n"), "200 OK", TEXT, [b"x"])

    assert wire.header("Connection") == "close"
    assert not response.keep_alive


def test_head_sends_headers_but_no_body() -> None:
    wire, response = respond(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", TEXT, [b"hello world"])

    assert wire.header("Content-Length") == "11"  # what a GET would have said
    assert wire.body == b""
    assert response.keep_alive


def test_head_with_declared_length_and_no_body_keeps_alive() -> None:
    """What every Flask view answers to HEAD: the GET's Content-Length, and no body."""
    wire, response = respond(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK",
                             [*TEXT, ("Content-Length", "1234")], [])

    assert wire.header("Content-Length") == "1234"
    assert wire.body == b""
    assert response.keep_alive


def test_head_of_a_streamed_body_is_not_chunked() -> None:
    wire, _ = respond(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", TEXT, [b"a", b"b"])

    assert wire.header("Transfer-Encoding") is None
    assert wire.body == b""


def test_head_without_any_length_does_not_invent_one() -> None:
    """Not 'Content-Length: 0', which a GET would not say (RFC 9110 9.3.2)."""
    wire, _ = respond(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", TEXT, [])

    assert wire.header("Content-Length") is None


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(status: str) -> None:
    wire, response = respond(get(), status, [], [b"ignored", b"body"])

    assert wire.status_line == f"HTTP/1.1 {status}"
    assert wire.header("Content-Length") is None
    assert wire.header("Transfer-Encoding") is None
    assert wire.body == b""
    assert response.keep_alive


def test_not_modified_with_content_length_keeps_alive() -> None:
    """A 304 may carry the Content-Length a GET would have (RFC 9110 8.6)."""
    wire, response = respond(get(), "304 Not Modified", [("Content-Length", "1234")], [])

    assert wire.body == b""
    assert response.keep_alive


def test_body_shorter_than_declared_closes_the_connection() -> None:
    wire, response = respond(get(), "200 OK", [*TEXT, ("Content-Length", "10")], [b"short"])

    assert wire.header("Connection") == "close"  # known before the headers went out
    assert not response.keep_alive


def test_body_shorter_than_declared_after_headers_closes_the_connection() -> None:
    wire, response = respond(get(), "200 OK", [*TEXT, ("Content-Length", "10")], [b"ab", b"cd"])

    assert wire.body == b"abcd"
    assert not response.keep_alive


def test_body_longer_than_declared_is_cut_and_closes() -> None:
    wire, response = respond(get(), "200 OK", [*TEXT, ("Content-Length", "5")], [b"hello", b" world"])

    assert wire.body == b"hello"
    assert not response.keep_alive


def test_hop_by_hop_headers_from_the_app_are_dropped() -> None:
    wire, response = respond(get(), "200 OK", [*TEXT, ("Transfer-Encoding", "gzip"),
                                               ("Keep-Alive", "timeout=99"),
                                               ("Connection", "keep-alive"), ("Upgrade", "h2c")],
                             [b"a", b"b"])

    assert wire.header("Keep-Alive") is None
    assert wire.header("Upgrade") is None
    assert wire.header("Connection") is None
    assert wire.header("Transfer-Encoding") == "chunked"  # ours, not the app's
    assert response.keep_alive


def test_app_connection_close_closes() -> None:
    wire, response = respond(get(), "200 OK", [*TEXT, ("Connection", "close")], [b"bye"])

    assert wire.header("Connection") == "close"
    assert not response.keep_alive


def test_date_header_is_added_once() -> None:
    wire, _ = respond(get(), "200 OK", TEXT, [b"x"])
    date = wire.header("Date")
    assert date is not None
    assert parsedate_to_datetime(date).tzinfo is not None

    wire, _ = respond(get(), "200 OK", [*TEXT, ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")], [b"x"])
    assert wire.header("Date") == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_app_headers_keep_their_order_and_repeats() -> None:
    wire, _ = respond(get(), "201 Created", [*TEXT, ("Set-Cookie", "a=1"), ("X-B", "2"),
                                             ("Set-Cookie", "b=2")], [b"x"])

    assert wire.status_line == "HTTP/1.1 201 Created"
    assert [h for h in wire.headers if h[0] in ("Set-Cookie", "X-B")] == [
        ("Set-Cookie", "a=1"), ("X-B", "2"), ("Set-Cookie", "b=2")]


def test_headers_go_out_lazily_with_the_first_chunk() -> None:
    wire = Wire()
    response = Response(wire, parse(get()))
    write = response.start_response("200 OK", TEXT)
    assert wire.raw == b""  # nothing before the body starts
    write(b"")
    assert wire.raw == b""
    write(b"first")
    assert wire.status_line == "HTTP/1.1 200 OK"
    assert wire.body == b"5\r\nfirst\r\n"  # not held for a second chunk that may be far off
    assert len(wire.chunks) == 1  # one hand-over to the connection for headers and chunk
    assert response.headers_sent


def test_a_streamed_chunk_is_passed_on_at_once() -> None:
    """An event stream's first event reaches the sink before the generator is asked for more."""
    wire = Wire()
    response = Response(wire, parse(get()))
    response.start_response("200 OK", [("Content-Type", "text/event-stream")])
    seen: list[bytes] = []

    def events() -> Iterator[bytes]:
        yield b"data: one\n\n"
        seen.append(wire.body)  # the generator resumes only after the first chunk is out
        yield b"data: two\n\n"

    app_iter = events()
    response.sized_by(app_iter)
    for chunk in app_iter:
        response.write(chunk)
    response.finish()

    assert seen == [b"b\r\ndata: one\n\n\r\n"]
    assert wire.body.endswith(b"0\r\n\r\n")


def test_a_one_chunk_generator_is_chunked() -> None:
    """Its length is known only at its end, and a stream's end can be far off."""
    wire, response = respond(get(), "200 OK", TEXT, iter([b"hello"]))

    assert wire.header("Content-Length") is None
    assert wire.header("Transfer-Encoding") == "chunked"
    assert wire.body == b"5\r\nhello\r\n0\r\n\r\n"
    assert response.keep_alive


@pytest.mark.parametrize("body", [[b"hello"], (b"hello",)])
def test_a_one_item_list_or_tuple_gets_a_length(body: Iterable[bytes]) -> None:
    wire, response = respond(get(), "200 OK", TEXT, body)

    assert wire.header("Content-Length") == "5"
    assert response.complete


def test_complete_once_the_declared_length_is_written() -> None:
    response = Response(Wire(), parse(get()))
    write = response.start_response("200 OK", [*TEXT, ("Content-Length", "4")])
    write(b"ab")
    assert not response.complete
    write(b"cd")
    assert response.complete


def test_a_stream_is_never_complete_before_its_end() -> None:
    response = Response(Wire(), parse(get()))
    write = response.start_response("200 OK", TEXT)
    write(b"ab")
    assert not response.complete


def test_exc_info_before_headers_replaces_the_response() -> None:
    wire = Wire()
    response = Response(wire, parse(get()))
    response.start_response("200 OK", TEXT)
    try:
        raise ValueError("late failure")
    except ValueError:
        response.start_response("500 Internal Server Error", TEXT, sys.exc_info())  # type: ignore[arg-type]
    response.write(b"oops")
    response.finish()

    assert wire.status_line == "HTTP/1.1 500 Internal Server Error"
    assert wire.body == b"4\r\noops\r\n0\r\n\r\n"


def test_exc_info_after_headers_reraises() -> None:
    wire = Wire()
    response = Response(wire, parse(get()))
    write = response.start_response("200 OK", TEXT)
    write(b"part one")
    write(b"part two")
    assert response.headers_sent

    try:
        raise ValueError("too late")
    except ValueError:
        with pytest.raises(ValueError, match="too late"):
            response.start_response("500 Internal Server Error", TEXT, sys.exc_info())  # type: ignore[arg-type]
    assert wire.status_line == "HTTP/1.1 200 OK"


def test_start_response_twice_without_exc_info_raises() -> None:
    response = Response(Wire(), parse(get()))
    response.start_response("200 OK", TEXT)

    with pytest.raises(ResponseError, match="second time"):
        response.start_response("200 OK", TEXT)


def test_body_before_start_response_raises() -> None:
    response = Response(Wire(), parse(get()))

    with pytest.raises(ResponseError, match="start_response"):
        response.finish()


@pytest.mark.parametrize("status", ["200", "OK", "2000 OK", "99 Too Low", "abc OK", "200-OK"])
def test_invalid_status_raises(status: str) -> None:
    with pytest.raises(ResponseError, match="invalid status"):
        Response(Wire(), parse(get())).start_response(status, [])


@pytest.mark.parametrize("status", ["100 Continue", "101 Switching Protocols", "103 Early Hints"])
def test_interim_status_is_not_a_response(status: str) -> None:
    wire = Wire()
    with pytest.raises(ResponseError, match="interim"):
        Response(wire, parse(get())).start_response(status, [])
    assert wire.raw == b""


@pytest.mark.parametrize(("method", "status", "framing"), [
    (b"GET", "204 No Content", b""), (b"GET", "304 Not Modified", b""),
    (b"HEAD", "200 OK", b"Content-Length: 4\r\n"), (b"GET", "200 OK", b"Content-Length: 4\r\n"),
])
def test_body_goes_out_only_where_one_may(method: bytes, status: str, framing: bytes) -> None:
    wire = Wire()
    response = Response(wire, parse(b"%s / HTTP/1.1\r\nHost: x\r\n\r\n" % method))
    response.start_response(status, [])
    response.sized_by([b"body"])
    response.write(b"body")
    response.finish()

    head, _, body = wire.raw.partition(b"\r\n\r\n")
    assert body == (b"body" if method == b"GET" and status == "200 OK" else b"")
    assert (b"Content-Length" in head or b"chunked" in head) == bool(framing)
    assert framing in head + b"\r\n"
    assert response.keep_alive


def test_invalid_content_length_from_the_app_raises() -> None:
    response = Response(Wire(), parse(get()))
    response.start_response("200 OK", [("Content-Length", "ten")])

    with pytest.raises(ResponseError, match="Content-Length"):
        response.finish()
    with pytest.raises(ResponseError, match="Content-Length"):
        response.declared_length()


@pytest.mark.parametrize(("name", "value"), [
    ("X-Split", "a\r\nSet-Cookie: admin=1"),
    ("X-Split", "a\nb"),
    ("X-Split\r\nSet-Cookie", "admin=1"),
    ("X-Split", "a\rb"),  # RFC 9110 5.5: a bare CR splits headers for some recipients
    ("X-Split", "a\x00b"),
    ("X-Name", "\u20ac"),  # not latin-1: cannot go out as it is
])
def test_unsendable_headers_are_refused(name: str, value: str) -> None:
    wire = Wire()
    response = Response(wire, parse(get()))
    response.start_response("200 OK", [(name, value)])

    with pytest.raises(ResponseError):
        response.finish()
    assert wire.raw == b""  # nothing of the forged header reached the client


def test_bare_cr_in_status_is_refused() -> None:
    response = Response(Wire(), parse(get()))

    with pytest.raises(ResponseError):
        response.start_response("200 OK\rSet-Cookie: admin=1", [])
        response.finish()


def test_refused_header_block_is_not_marked_sent() -> None:
    """So the engine can still answer 500 instead of dropping the connection."""
    response = Response(Wire(), parse(get()))
    response.start_response("200 OK", [("X", "a\nb")])

    with pytest.raises(ResponseError):
        response.finish()
    assert not response.headers_sent


def test_error_response_is_complete() -> None:
    raw = error_response(431, "Request Header Fields Too Large", keep_alive=False)

    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert any(line.startswith("Date: ") for line in lines)
    assert body == b"431 Request Header Fields Too Large\n"
    assert b"Connection: keep-alive" in error_response(500, "Internal Server Error", keep_alive=True)


# -- FileWrapper --------------------------------------------------------------------------------


def test_file_wrapper_iterates_in_blocks_and_closes() -> None:
    stream = io.BytesIO(b"x" * 10)
    wrapper = FileWrapper(stream, 4)

    assert list(wrapper) == [b"xxxx", b"xxxx", b"xx"]
    wrapper.close()
    assert stream.closed


def test_file_wrapper_without_close() -> None:
    class Reader:
        def read(self, size: int) -> bytes:
            return b""

    FileWrapper(Reader()).close()  # type: ignore[arg-type]  # nothing to close, no error


def test_the_date_line_is_never_empty_for_a_thread_that_comes_in_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an app thread asking while another formatted the new second got "" (in a
    fresh worker under --threads N), and its response was refused as a bad header: a 500."""
    cache = wsgi._DateCache()
    seen: list[str] = []
    real = wsgi.formatdate

    def formatdate_while_another_thread_asks(*args: Any, **kwargs: Any) -> str:
        if not seen:
            seen.append("")  # once: the other thread's call formats for itself
            seen[0] = cache.get()
        return real(*args, **kwargs)

    monkeypatch.setattr(wsgi, "formatdate", formatdate_while_another_thread_asks)
    assert cache.get().startswith("Date: ")
    assert seen[0].startswith("Date: ")
