"""The request corpus in ``requests_cases.py``, fed to the parser whole and in random splits.

A connection hands the parser whatever ``recv`` returned, so every case must parse the same way
whatever the split: whole, byte by byte, and in seeded random chunks (as gunicorn's ``treq.py``
does). Like the connection, we stop feeding after an error or once the request switched
protocols.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_cluster.http.errors import HTTPError
from flask_cluster.http.parser import Limits, Request, RequestParser
from tests.requests_cases import INVALID, VALID, Expected, Invalid, Valid

SPLITS = ["whole", "bytewise", "seed-1", "seed-2", "seed-3", "seed-4"]
STATUSES = {400, 413, 414, 417, 431, 501, 505}
PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def pieces(raw: bytes, split: str) -> Iterator[bytes]:
    if split == "whole":
        yield raw
        return
    rng = random.Random(split)
    i = 0
    while i < len(raw):
        size = 1 if split == "bytewise" else rng.randint(1, 9)
        yield raw[i:i + size]
        i += size


def parse(chunks: Iterator[bytes] | list[bytes], limits: Limits | None = None) -> RequestParser:
    parser = RequestParser(limits or Limits())
    for chunk in chunks:
        parser.feed(chunk)
        if parser.upgraded:
            break
    return parser


def seen(request: Request) -> Expected:
    return Expected(request.method, request.url, request.version, list(request.headers),
                    request.body.read(), request.keep_alive, request.expect_continue)


def bug_marks(case: Valid | Invalid) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(reason=f"bug: {case.bug}", strict=True)] if case.bug else []


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", [pytest.param(case, id=case.name, marks=bug_marks(case))
                                  for case in VALID])
def test_valid_request(case: Valid, split: str) -> None:
    parser = parse(pieces(case.raw, split))

    assert [seen(request) for request in parser.requests] == case.requests
    if case.upgraded is not None:
        assert parser.upgraded == case.upgraded
    assert not parser.in_progress


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", [pytest.param(case, id=case.name, marks=bug_marks(case))
                                  for case in INVALID])
def test_invalid_request(case: Invalid, split: str) -> None:
    with pytest.raises(HTTPError) as info:
        parse(pieces(case.raw, split))

    assert info.value.status == case.status
    assert info.value.detail  # the reason, for the log


PIPELINABLE = [case for case in VALID
               if not case.bug and not case.upgraded and case.requests[-1].keep_alive
               and case.requests[0].version == "1.1"]


@pytest.mark.parametrize("split", SPLITS)
def test_corpus_pipelined_in_one_stream(split: str) -> None:
    stream = b"".join(case.raw for case in PIPELINABLE)

    parser = parse(pieces(stream, split))

    expected = [request for case in PIPELINABLE for request in case.requests]
    assert [seen(request) for request in parser.requests] == expected
    assert len(expected) > 15


@PROPERTY
@given(case=st.sampled_from([case for case in VALID if not case.bug]), data=st.data())
def test_any_split_parses_like_whole(case: Valid, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(case.raw) - 1)), max_size=12)))
    chunks = [case.raw[start:end] for start, end in zip([0, *cuts], [*cuts, len(case.raw)], strict=True)]

    parser = parse(chunks)

    assert [seen(request) for request in parser.requests] == case.requests


@PROPERTY
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_raise_only_http_error(chunks: list[bytes]) -> None:
    try:
        parser = parse(chunks, Limits(max_url=64, max_header_bytes=256, max_headers=4,
                                      max_body=64))
    except HTTPError as exc:
        assert exc.status in STATUSES
    else:
        for request in parser.requests:
            assert isinstance(request.body.read(), bytes)


_request_prefixes = st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /p?q HTTP/1.1\r\n",
                                     b"PUT / HTTP/1.0\r\n", b"\r\n"])
_header_lines = st.lists(
    st.sampled_from([b"Host: x\r\n", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
                     b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"X: \x00\r\n",
                     b"Connection: Upgrade\r\n", b"Upgrade: h2c\r\n", b" folded\r\n", b"\n",
                     b"\r", b":\r\n", b"Content-Length: 99999999999\r\n"])
    | st.binary(max_size=12), max_size=6)
_bodies = st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n", b"ffffffff\r\n",
                           b"3;x=\"\r\nabc\r\n0\r\nT: 1\r\n\r\n"]) | st.binary(max_size=16)


@PROPERTY
@given(prefix=_request_prefixes, lines=_header_lines, end=st.sampled_from([b"\r\n", b"\n", b""]),
       body=_bodies, repeat=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_request_shaped_garbage_raises_only_http_error(prefix: bytes, lines: list[bytes],
                                                       end: bytes, body: bytes, repeat: int,
                                                       seed: int) -> None:
    """Near-misses of real requests reach deeper parser states than uniform random bytes."""
    raw = (prefix + b"".join(lines) + end + body) * repeat
    rng = random.Random(seed)
    chunks = []
    i = 0
    while i < len(raw):
        size = rng.randint(1, 16)
        chunks.append(raw[i:i + size])
        i += size
    try:
        parser = parse(chunks, Limits(max_body=8))
    except HTTPError as exc:
        assert exc.status in STATUSES
    else:
        for request in parser.requests:
            assert request.method.isupper()
            assert isinstance(request.body.read(), bytes)
