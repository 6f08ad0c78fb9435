"""The sans-IO HTTP connection: bytes in, requests out, and the bytes the server itself owes,
without a socket. Each case is also fed in random chunks: the split must not matter."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from flask_cluster.http.connection import CONTINUE, HTTPConnection
from flask_cluster.http.errors import ServerFault
from flask_cluster.http.parser import Limits, Request

GET = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
GET_B = b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n"
CLOSE = b"GET /close HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
BAD = b"GET / HTTP/1.1\r\nHost: t\r\nbad header\r\n\r\n"
EXPECT = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def feed(data: bytes, cuts: list[int] | None = None) -> tuple[HTTPConnection, bytes]:
    """A connection fed ``data`` (split at ``cuts``), and what it asked to send meanwhile."""
    http = HTTPConnection(Limits())
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts or [])})
    sent = b"".join(http.receive_data(data[a:b]) for a, b in itertools.pairwise(points) if b > a)
    return http, sent


def answer_all(http: HTTPConnection, keep_alive: bool = True) -> list[bytes]:
    """Take and answer every request; the targets in the order they came."""
    targets = []
    while (request := http.next_request()) is not None:
        targets.append(request.url)
        http.response_done(keep_alive and request.keep_alive)
    return targets


cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=8)


@given(cuts)
def test_pipelined_requests_come_one_at_a_time_in_order(split: list[int]) -> None:
    http, sent = feed(GET + GET_B + GET, split)
    first = http.next_request()
    assert isinstance(first, Request) and first.url == b"/a"
    assert http.next_request() is None  # one at a time: the first is being answered
    http.response_done(True)
    assert answer_all(http) == [b"/b", b"/a"]
    assert sent == b"" and http.idle and not http.closing


@given(cuts)
def test_requests_after_a_closing_response_are_dropped(split: list[int]) -> None:
    http, _ = feed(GET + CLOSE + GET_B, split)
    assert answer_all(http) == [b"/a", b"/close"]
    assert http.closing and http.done
    assert http.receive_data(GET) == b"" and http.next_request() is None


def test_a_response_that_does_not_keep_alive_closes_the_connection() -> None:
    http, _ = feed(GET + GET_B)
    assert answer_all(http, keep_alive=False) == [b"/a"]
    assert http.done and http.refusal() == b""


@given(cuts)
def test_a_bad_request_is_refused_after_the_earlier_ones_are_answered(split: list[int]) -> None:
    http, sent = feed(GET + BAD + GET_B, split)
    assert sent == b""
    request = http.next_request()
    assert request is not None
    assert http.refusal() == b""  # the answer to /a comes first
    http.response_done(True)
    assert http.next_request() is None  # nothing after the bad request is read
    refusal = http.refusal()
    assert refusal.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in refusal
    assert http.error is not None and http.error.status == 400
    assert http.done and http.refusal() == b""  # once
    assert http.receive_data(GET) == b"" and not http.has_requests


def test_no_refusal_after_the_client_half_closed_or_a_closing_response() -> None:
    http, _ = feed(CLOSE + BAD)
    assert answer_all(http) == [b"/close"]
    assert http.refusal() == b""


def test_a_request_that_cannot_be_prepared_is_answered_500() -> None:
    http, _ = feed(GET + GET_B)
    assert http.next_request() is not None
    http.fail(ServerFault("no environ"))
    assert not http.has_requests and not http.responding
    assert http.refusal().startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert http.done


@given(cuts)
def test_100_continue_when_the_client_waits_for_it(split: list[int]) -> None:
    http, sent = feed(EXPECT, split)
    assert sent == CONTINUE
    assert http.in_progress and http.headers_complete and not http.idle
    assert http.receive_data(b"abc") == b""
    request = http.next_request()
    assert request is not None and request.body.read() == b"abc"


def test_no_100_continue_when_the_body_came_along() -> None:
    http, sent = feed(EXPECT + b"abc")
    assert sent == b"" and http.has_requests


def test_no_100_continue_while_an_earlier_response_is_in_progress() -> None:
    http, _ = feed(GET)
    assert http.next_request() is not None
    assert http.receive_data(EXPECT) == b""


@given(cuts)
def test_an_upgrade_request_is_answered_then_the_connection_closes(split: list[int]) -> None:
    http, _ = feed(UPGRADE + b"\x81\x05hello", split)
    assert http.closing and not http.done
    assert answer_all(http) == [b"/ws"]
    assert http.done


def test_end_of_file_answers_what_was_asked_then_closes() -> None:
    http, _ = feed(GET + GET_B)
    assert http.receive_data(b"") == b""
    assert http.closing and not http.done
    assert answer_all(http) == [b"/a", b"/b"]
    assert http.done


def test_idle_means_nothing_answered_waiting_or_arriving() -> None:
    http = HTTPConnection(Limits())
    assert http.idle
    http.receive_data(GET[:10])
    assert not http.idle and http.in_progress and not http.headers_complete
    http.receive_data(GET[10:])
    assert not http.idle and http.has_requests
    assert http.next_request() is not None
    assert not http.idle and http.responding
    http.response_done(True)
    assert http.idle


def test_time_out_gives_408_and_closes() -> None:
    http, _ = feed(GET[:10])
    assert http.time_out().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert http.closing


@settings(max_examples=50)
@given(st.lists(st.sampled_from([GET, GET_B, CLOSE, BAD, EXPECT + b"abc", b"\r\n"]), max_size=6),
       cuts)
def test_any_split_gives_the_same_requests_and_refusal(parts: list[bytes], split: list[int]) -> None:
    data = b"".join(parts)
    whole, _ = feed(data)
    pieces, _ = feed(data, split)
    assert answer_all(pieces) == answer_all(whole)
    assert pieces.refusal().split(b"\r\n")[0] == whole.refusal().split(b"\r\n")[0]
    assert pieces.done == whole.done
