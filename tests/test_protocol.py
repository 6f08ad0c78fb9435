"""``RequestParser``: limits, body spooling, ``100-continue`` and the state the connection reads.

The request corpus (valid and malformed requests, whole and split) is in ``test_conformance.py``;
this module covers what the parser adds on top of llhttp.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pytest

from flask_cluster.http.errors import (
    BadRequest,
    ExpectationFailed,
    HeadersTooLarge,
    HTTPError,
    NotImplementedMethod,
    PayloadTooLarge,
    URITooLong,
)
from flask_cluster.http.parser import Limits, RequestParser

SEEDS = [0, 1, 2, 3]


def feed_split(parser: RequestParser, data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        size = rng.randint(1, 11)
        parser.feed(data[i:i + size])
        i += size


def post(body: bytes, *, extra: bytes = b"") -> bytes:
    return (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%b\r\n%b"
            % (len(body), extra, body))


def chunked_post(*chunks: bytes) -> bytes:
    framed = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks)
    return b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "status"), [
    (BadRequest, 400), (PayloadTooLarge, 413), (URITooLong, 414), (ExpectationFailed, 417),
    (HeadersTooLarge, 431), (NotImplementedMethod, 501),
])
def test_each_error_knows_its_status(error: type[HTTPError], status: int) -> None:
    exc = error()

    assert isinstance(exc, HTTPError)
    assert exc.status == status
    assert exc.detail == exc.reason == str(exc)
    assert error("why").detail == "why"


# -- the state the connection reads -------------------------------------------------------------


def test_request_appears_only_when_complete() -> None:
    parser = RequestParser(Limits())

    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
    assert parser.in_progress
    assert not parser.requests

    parser.feed(b"lo")
    assert not parser.in_progress
    [request] = parser.requests
    assert request.body.read() == b"hello"


def test_consumed_requests_leave_the_queue_and_the_parser_keeps_going() -> None:
    parser = RequestParser(Limits())
    for i in range(300):
        parser.feed(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert parser.requests.popleft().url == b"/%d" % i
    assert not parser.requests
    assert not parser.in_progress


def test_body_starts_at_the_beginning() -> None:
    parser = RequestParser(Limits())
    parser.feed(post(b"abcdef"))

    body = parser.requests[0].body

    assert body.tell() == 0
    assert body.read(3) == b"abc"
    assert body.read() == b"def"


def test_requests_without_body_get_an_empty_stream() -> None:
    parser = RequestParser(Limits())
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    assert parser.requests[0].body.read() == b""


def test_connect_is_refused_as_not_implemented_before_its_tunnel_bytes() -> None:
    parser = RequestParser(Limits())

    with pytest.raises(NotImplementedMethod, match="does not tunnel"):
        parser.feed(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00\x01binary")
    assert not parser.requests


def test_data_after_a_closing_http10_request_is_refused_after_the_request() -> None:
    parser = RequestParser(Limits())

    with pytest.raises(BadRequest):
        parser.feed(b"GET /first HTTP/1.0\r\n\r\nGET /second HTTP/1.0\r\n\r\n")

    # The first request is complete and is answered; the connection closes after it.
    assert [request.url for request in parser.requests] == [b"/first"]
    assert not parser.requests[0].keep_alive


# -- 100-continue -------------------------------------------------------------------------------


def test_expect_continue_is_wanted_once_the_headers_are_in() -> None:
    parser = RequestParser(Limits())

    parser.feed(b"PUT /f HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n")
    assert not parser.continue_wanted  # the header block is not complete yet
    parser.feed(b"\r\n")
    assert parser.continue_wanted
    assert parser.in_progress

    parser.continue_wanted = False  # the connection takes the signal and sends "100 Continue"
    parser.feed(b"data")
    [request] = parser.requests
    assert request.expect_continue
    assert request.body.read() == b"data"
    assert not parser.continue_wanted


def test_expect_continue_is_not_wanted_from_http10_clients() -> None:
    parser = RequestParser(Limits())

    parser.feed(b"PUT /f HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")

    assert not parser.continue_wanted


def test_unknown_expectation_is_refused_with_417() -> None:
    parser = RequestParser(Limits())

    with pytest.raises(ExpectationFailed) as info:
        parser.feed(b"PUT /f HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 4\r\n\r\n")

    assert info.value.status == 417


def test_expect_continue_with_trailing_whitespace() -> None:
    parser = RequestParser(Limits())

    parser.feed(b"PUT /f HTTP/1.1\r\nHost: x\r\nExpect: 100-continue \r\nContent-Length: 4\r\n\r\n")

    assert parser.continue_wanted


# -- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_url_at_the_limit_is_accepted(seed: int) -> None:
    parser = RequestParser(Limits(max_url=32))
    url = b"/" + b"a" * 31

    feed_split(parser, b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % url, seed)

    assert parser.requests[0].url == url


@pytest.mark.parametrize("seed", SEEDS)
def test_url_over_the_limit_gets_414_before_the_line_ends(seed: int) -> None:
    parser = RequestParser(Limits(max_url=32))

    with pytest.raises(URITooLong) as info:
        feed_split(parser, b"GET /" + b"a" * 100, seed)  # no end of line: refused while it streams

    assert info.value.status == 414


def test_header_count_limit() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(3))
    parser = RequestParser(Limits(max_headers=4))
    parser.feed(head + b"\r\n")
    assert len(parser.requests[0].headers) == 4

    parser = RequestParser(Limits(max_headers=4))
    with pytest.raises(HeadersTooLarge) as info:
        parser.feed(head + b"X-3: v\r\n\r\n")
    assert info.value.status == 431


@pytest.mark.parametrize("seed", SEEDS)
def test_header_bytes_limit(seed: int) -> None:
    limits = Limits(max_header_bytes=200)
    # Each field counts name + value + 4: 9 + 30 + 4 = 43 bytes, and "Host: x" 4 + 1 + 4 = 9.
    fields = b"Host: x\r\n" + b"".join(b"X-Field-%d: %b\r\n" % (i, b"v" * 30) for i in range(4))
    parser = RequestParser(limits)
    feed_split(parser, b"GET / HTTP/1.1\r\n" + fields + b"\r\n", seed)  # 181 bytes
    assert len(parser.requests[0].headers) == 5

    parser = RequestParser(limits)
    with pytest.raises(HeadersTooLarge):
        feed_split(parser, b"GET / HTTP/1.1\r\n" + fields + b"X-Last: vvvvvvvvvv\r\n\r\n", seed)


@pytest.mark.parametrize("part", ["name", "value"])
def test_endless_header_line_is_refused_while_it_streams(part: str) -> None:
    """httptools buffers a header line whole before on_header sees it: without a bound, one
    endless field would grow memory (in quadratic time) instead of getting 431."""
    parser = RequestParser(Limits(max_header_bytes=4096))
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"X-" if part == "name" else b"X: "))

    with pytest.raises(HeadersTooLarge):
        for _ in range(256):  # 1 MiB, never a line end
            parser.feed(b"a" * 4096)


@pytest.mark.parametrize("seed", SEEDS)
def test_body_limit(seed: int) -> None:
    limits = Limits(max_body=10)
    parser = RequestParser(limits)
    feed_split(parser, post(b"0123456789") + chunked_post(b"01234", b"56789"), seed)
    assert [request.body.read() for request in parser.requests] == [b"0123456789"] * 2

    with pytest.raises(PayloadTooLarge) as info:
        feed_split(RequestParser(limits), post(b"0123456789a"), seed)
    assert info.value.status == 413
    with pytest.raises(PayloadTooLarge):
        feed_split(RequestParser(limits), chunked_post(b"01234", b"56789", b"a"), seed)


def test_body_limit_refuses_a_chunked_body_while_it_streams() -> None:
    parser = RequestParser(Limits(max_body=1024))
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

    with pytest.raises(PayloadTooLarge):
        for _ in range(3):  # no length declared: counted as it arrives
            parser.feed(b"3e8\r\n" + b"a" * 1000 + b"\r\n")


def test_declared_body_over_the_limit_is_refused_before_it_is_read() -> None:
    parser = RequestParser(Limits(max_body=10))

    with pytest.raises(PayloadTooLarge):
        parser.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
                    b"Expect: 100-continue\r\n\r\n")

    assert not parser.continue_wanted  # the client is never invited to send it


def test_no_body_limit_by_default() -> None:
    parser = RequestParser(Limits(spool_threshold=1024))
    body = random.Random(7).randbytes(3 * 1024 * 1024)

    parser.feed(post(body))

    with parser.requests[0].body as received:
        assert received.read() == body


# -- spooling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_body_up_to_the_threshold_stays_in_memory(seed: int) -> None:
    parser = RequestParser(Limits(spool_threshold=100))
    feed_split(parser, post(b"m" * 100), seed)

    body = parser.requests[0].body

    assert isinstance(body, io.BytesIO)
    assert body.read() == b"m" * 100


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_past_the_threshold_spools_to_a_file(seed: int, framing: str) -> None:
    payload = random.Random(seed).randbytes(1000)
    raw = post(payload) if framing == "length" else chunked_post(*[payload[i:i + 77]
                                                                  for i in range(0, 1000, 77)])
    parser = RequestParser(Limits(spool_threshold=100))
    feed_split(parser, raw, seed)

    body = parser.requests[0].body

    with body:
        assert not isinstance(body, io.BytesIO)
        assert body.fileno() >= 0  # a real temporary file
        assert body.tell() == 0
        assert body.read() == payload


def test_each_request_gets_its_own_body() -> None:
    parser = RequestParser(Limits(spool_threshold=8))
    parser.feed(post(b"first body") + post(b"2nd") + post(b"third body"))

    bodies = [request.body for request in parser.requests]
    try:
        assert [body.read() for body in bodies] == [b"first body", b"2nd", b"third body"]
    finally:
        for body in bodies:
            body.close()


SPOOL_ON_A_FULL_DISK = """
import resource
from flask_cluster.http.errors import ServerFault
from flask_cluster.http.parser import Limits, RequestParser

resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files of 1 MiB at most
parser = RequestParser(Limits(spool_threshold=64 * 1024))
parser.feed(b"POST /up HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % (5 << 20))
try:
    for _ in range(80):
        parser.feed(b"x" * 65536)
except ServerFault as exc:
    print(exc.status, exc.detail)
"""


def test_a_disk_error_while_spooling_is_our_fault_not_the_clients() -> None:
    """Regression: a full disk (here: the file size limit) answered 400 Bad Request."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", SPOOL_ON_A_FULL_DISK], cwd=root,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("500 cannot store the request body: "), done.stdout
