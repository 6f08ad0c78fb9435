"""HTTP hardening against a real cluster over loopback: refused requests, the header timeout,
keep-alive idle close, pipelining, trusted proxy headers and the access log.

Every refused request is written raw to a real socket. The client must see the status line of
one complete response, then the server's close, and the worker must go on serving new
connections (same pid: nothing crashed and was replaced).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import (
    ClusterProcess,
    StartCluster,
    cluster_process,
    read_reply,
    read_until_close,
    wait_until,
)

APP = "tests.hardening_apps.probe"
HEADER_TIMEOUT = 2.0
KEEP_ALIVE = 1.0
TICK = 1.0  # the engine's housekeeping period: timeouts fire on the first tick past them
SLACK = 1.5  # a loaded 2-core machine
LIMITS = ("--limit-request-line", "128", "--limit-request-fields", "8",
          "--limit-request-header-bytes", "1024", "--max-body", "4096",
          "--header-timeout", str(HEADER_TIMEOUT), "--keep-alive", str(KEEP_ALIVE))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    """One worker with small limits, a 2 s header timeout and a 1 s keep-alive, shared by the
    tests of this module that do not need options of their own."""
    log = tmp_path_factory.mktemp("hardening") / "cluster.log"
    with cluster_process(log, APP, "--workers", "1", "--host", "127.0.0.1", "--port", "0",
                         "--graceful-timeout", "5", *LIMITS) as cluster:
        cluster.wait_started()
        yield cluster


# -- raw HTTP --------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes) -> list[RawResponse]:
    """Split ``data`` into complete ``Content-Length`` framed responses; fail on anything else."""
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete header block: {data[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .*", status_line)
        assert match, f"bad status line {status_line!r}"
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        assert len(rest) >= length, f"body cut short: {len(rest)} of {length} bytes"
        responses.append(RawResponse(int(match[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


def read_response(sock: socket.socket) -> bytes:
    """Bytes up to the end of one ``Content-Length`` framed response."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            assert length, head
            if len(rest) >= int(length[1]):
                return data
        chunk = sock.recv(65536)
        assert chunk, f"closed before a complete response: {data[:200]!r}"
        data += chunk


def connect(cluster: ClusterProcess, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((cluster.host, cluster.port), timeout=timeout)


# -- refused requests ------------------------------------------------------------------------------

POST = b"POST /digest HTTP/1.1\r\nHost: t\r\n"
GET = b"GET /info HTTP/1.1\r\nHost: t\r\n"


@dataclass(frozen=True)
class Refused:
    name: str
    raw: bytes
    statuses: tuple[int, ...]
    bug: str | None = None
    trickle: bytes = b""  # sent a few bytes every 0.25 s after ``raw``, until the server ends it


def _chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


# Statuses: RFC 9112 6.3 (framing: 400), 6.1 (a transfer coding we do not understand: 501), 5.2
# (obs-fold: 400), 2.2 (bare CR: 400; bare LF: we take the strict side), 3.2 (Host: 400), RFC 9110
# 15.6.2 (unknown method: 501), 10.1.1 (expectation: 417); the limits come from LIMITS above.
REFUSED = [
    Refused("content-length-with-transfer-encoding",
            POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (400,)),
    Refused("duplicate-content-length", POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            (400,)),
    Refused("invalid-content-length", POST + b"Content-Length: abc\r\n\r\n", (400,)),
    Refused("negative-content-length", POST + b"Content-Length: -1\r\n\r\n", (400,)),
    Refused("transfer-coding-without-chunked", POST + b"Transfer-Encoding: gzip\r\n\r\nabc", (400,)),
    Refused("chunked-not-the-last-coding",
            POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n" + _chunked(b"abc"), (400,)),
    Refused("unknown-transfer-coding-before-chunked",
            POST + b"Transfer-Encoding: frobnicate, chunked\r\n\r\n" + _chunked(b"abc"), (501,)),
    Refused("obs-fold", GET + b"X-Folded: a\r\n b\r\n\r\n", (400,)),
    Refused("bare-lf-line-endings", b"GET /info HTTP/1.1\nHost: t\n\n", (400,)),
    Refused("bare-lf-after-a-field", GET + b"X-A: 1\nX-B: 2\r\n\r\n", (400,)),
    Refused("bare-cr-after-request-line", b"GET /info HTTP/1.1\rHost: t\r\n\r\n", (400,)),
    Refused("bare-cr-in-a-field", GET + b"X-A: 1\rX-B: 2\r\n\r\n", (400,)),
    Refused("space-in-header-name", GET + b"Bad Name: 1\r\n\r\n", (400,)),
    Refused("space-before-colon", GET + b"X-A : 1\r\n\r\n", (400,)),
    Refused("parenthesis-in-header-name", GET + b"X(A): 1\r\n\r\n", (400,)),
    Refused("empty-header-name", GET + b": 1\r\n\r\n", (400,)),
    Refused("invalid-method-token", b"G@T /info HTTP/1.1\r\nHost: t\r\n\r\n", (400,)),
    Refused("connect", b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", (501,)),
    Refused("asterisk-form-with-get", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", (400,)),
    Refused("http-2.0-request-line", b"GET /info HTTP/2.0\r\nHost: t\r\n\r\n", (505,)),
    Refused("request-line-too-long", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n", (414,)),
    Refused("too-many-header-fields",
            GET + b"".join(b"X-Field-%d: v\r\n" % i for i in range(10)) + b"\r\n", (431,)),
    Refused("header-block-too-large", GET + b"X-Big: " + b"b" * 1100 + b"\r\n\r\n", (431,)),
    Refused("body-too-large", POST + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000, (413,)),
    Refused("chunked-body-too-large",
            POST + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"x" * 3000, b"y" * 3000),
            (413,)),
    Refused("expectation-other-than-100-continue",
            POST + b"Expect: 200-ok\r\nContent-Length: 3\r\n\r\nabc", (417,)),
    Refused("http11-without-host", b"GET /info HTTP/1.1\r\nAccept: */*\r\n\r\n", (400,)),
    Refused("two-host-fields", b"GET /info HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", (400,)),
    # Slowloris: header lines keep coming, a few bytes at a time, but the block never ends.
    Refused("header-timeout", GET, (408,),
            trickle=b"".join(b"X-Trickle-%02d: %s\r\n" % (n, b"y" * 14) for n in range(100))),
]


def _param(case: Refused) -> object:
    marks = [pytest.mark.xfail(reason=f"bug: {case.bug}", strict=True)] if case.bug else []
    return pytest.param(case, id=case.name, marks=marks)


def _worker_pid(cluster: ClusterProcess) -> int:
    reply = cluster.request("/info")
    assert reply.status == 200, reply.text
    return int(reply.json()["pid"])


@pytest.mark.parametrize("case", [_param(case) for case in REFUSED])
def test_refused_request_gets_its_status_and_a_close(limited: ClusterProcess, case: Refused) -> None:
    pid = _worker_pid(limited)
    with connect(limited, timeout=0.25 if case.trickle else 10.0) as sock:
        sock.sendall(case.raw)
        if case.trickle:
            data, end = _trickle(sock, case.trickle)
        else:
            data, end = read_until_close(sock)

    responses = parse_responses(data)
    assert responses, f"no response before the {end}"
    assert responses[0].status in case.statuses, data[:300]
    assert len(responses) == 1, "one response, nothing after it"
    assert responses[0].headers.get("connection") == "close"
    # A reset is only acceptable when the client was still sending as the server closed.
    assert end == "close" or (case.trickle and end == "reset"), \
        f"the server must close after refusing (got {end})"
    # A new connection is served, by the same worker: the refusal crashed nothing.
    assert _worker_pid(limited) == pid


def _trickle(sock: socket.socket, trickle: bytes) -> tuple[bytes, str]:
    """Send ``trickle`` 8 bytes every 0.25 s until the server ends the connection, which must
    happen at the header timeout (on the housekeeping tick after it)."""
    started = time.monotonic()
    data, end, sent = b"", "timeout", 0
    deadline = started + HEADER_TIMEOUT + TICK + 2 * SLACK
    while end == "timeout" and time.monotonic() < deadline:
        try:
            sock.sendall(trickle[sent:sent + 8])
            sent += 8
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed under us: read what came before the close
        chunk, end = read_until_close(sock)  # waits up to the socket's 0.25 s timeout
        data += chunk
    elapsed = time.monotonic() - started
    assert end != "timeout", f"still open after {elapsed:.1f}s"
    assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + TICK + SLACK, elapsed
    assert trickle[:sent].count(b"\r\n") >= 1, "whole header lines arrived meanwhile"
    return data, end


def test_http10_request_with_transfer_encoding_closes_after_the_response(
        limited: ClusterProcess) -> None:
    """RFC 9112 6.1: "A server ... that receives an HTTP/1.0 message containing a
    Transfer-Encoding header field MUST treat the message as if the framing is faulty ... and
    close the connection after processing the message" -- even when the client asks to keep it."""
    raw = (b"POST /digest HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"abc"))
    with connect(limited) as sock:
        sock.sendall(raw)
        data = read_response(sock)
        sock.settimeout(KEEP_ALIVE / 2)  # before the keep-alive sweep could close it
        rest, end = read_until_close(sock)

    [response] = parse_responses(data + rest)
    assert response.status == 200
    assert json.loads(response.body)["size"] == 3
    assert response.headers.get("connection") == "close"
    assert end == "close"


def test_declared_body_over_max_body_is_refused_before_it_is_sent(limited: ClusterProcess) -> None:
    """RFC 9110 10.1.1: the status can be determined from the header fields alone, so the client
    waiting for 100 Continue gets the final 413 instead and never sends its 100 kB."""
    with connect(limited, timeout=HEADER_TIMEOUT) as sock:
        sock.sendall(POST + b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
        data, end = read_until_close(sock)

    assert data.startswith(b"HTTP/1.1 413 "), data[:100]
    assert [r.status for r in parse_responses(data)] == [413]
    assert end == "close"


def test_upload_far_over_max_body_gets_413_not_a_reset(limited: ClusterProcess) -> None:
    """http.client (and urllib) send the whole body before they read: the server has to read
    and drop the rest for a while after refusing, or the client sees only a reset."""
    conn = limited.connection()
    try:
        reply = read_reply(conn, "POST", "/digest", body=b"x" * (20 * 1024 * 1024))
    finally:
        conn.close()

    assert reply.status == 413
    assert _worker_pid(limited) > 0


def test_stalled_body_is_closed_after_the_header_timeout(limited: ClusterProcess) -> None:
    """A request whose body stops arriving does not hold the connection forever."""
    with connect(limited, timeout=HEADER_TIMEOUT + TICK + 2 * SLACK) as sock:
        sock.sendall(POST + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        _data, end = read_until_close(sock)
        elapsed = time.monotonic() - started

    assert end in ("close", "reset")
    assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + TICK + SLACK, elapsed


# -- keep-alive and pipelining -----------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
        limited: ClusterProcess) -> None:
    with connect(limited, timeout=KEEP_ALIVE + TICK + 2 * SLACK) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = read_response(sock)
        idle_since = time.monotonic()
        rest, end = read_until_close(sock)
        idle = time.monotonic() - idle_since

    [response] = parse_responses(data + rest)
    assert response.status == 200 and response.body == b"ok"
    assert response.headers.get("connection", "keep-alive") != "close"
    assert end == "close"
    assert KEEP_ALIVE - 0.2 <= idle <= KEEP_ALIVE + TICK + SLACK, idle


def test_busy_keep_alive_connection_outlives_the_keep_alive_timeout(limited: ClusterProcess) -> None:
    """Only idleness counts: a connection in use for longer than --keep-alive stays open."""
    conn = limited.connection()
    try:
        first = read_reply(conn, "GET", "/info")
        sock = conn.sock
        replies = [first]
        for _ in range(6):
            time.sleep(KEEP_ALIVE / 2.5)
            replies.append(read_reply(conn, "GET", "/info"))
        assert conn.sock is sock, "the same connection throughout"
    finally:
        conn.close()
    assert [reply.status for reply in replies] == [200] * 7


def test_pipelined_requests_in_one_send_are_answered_in_order(limited: ClusterProcess) -> None:
    requests = (b"GET /info?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /info?n=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    with connect(limited) as sock:
        sock.sendall(requests)
        data, end = read_until_close(sock)

    assert end == "close"
    first, second, third = parse_responses(data)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert json.loads(first.body)["path"] == "/info?n=1"
    assert json.loads(second.body)["size"] == 3
    assert json.loads(third.body)["path"] == "/info?n=3"
    assert third.headers["connection"] == "close"


def test_pipelined_requests_after_a_refused_one_are_not_answered(limited: ClusterProcess) -> None:
    """The bytes after a malformed request cannot be trusted as a request of their own."""
    requests = (b"GET /info?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /info?n=2 HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"
                b"GET /info?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
    with connect(limited) as sock:
        sock.sendall(requests)
        data, end = read_until_close(sock)

    assert end == "close"
    assert [r.status for r in parse_responses(data)] == [200, 400]


# -- proxy headers -----------------------------------------------------------------------------------

FORWARDED = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto": "https"}


def _info(cluster: ClusterProcess, headers: dict[str, str]) -> dict[str, object]:
    conn = cluster.connection()
    try:
        reply = read_reply(conn, "GET", "/info", headers=headers)
    finally:
        conn.close()
    assert reply.status == 200, reply.text
    return dict(reply.json())


def test_forwarded_headers_from_a_trusted_proxy_set_address_and_scheme(
        limited: ClusterProcess) -> None:
    # Default --forwarded-allow-ips: 127.0.0.1,::1 -- the test client is the proxy.
    info = _info(limited, FORWARDED)

    assert info["remote_addr"] == "203.0.113.7", "the entry our proxy added: the last one"
    assert info["scheme"] == info["url_scheme"] == "https"
    assert str(info["url"]).startswith("https://")
    assert info["proxy_addr"] == "127.0.0.1"


def test_forwarded_headers_with_underscores_are_ignored(limited: ClusterProcess) -> None:
    info = _info(limited, {"X_Forwarded_For": "203.0.113.7", "X_Forwarded_Proto": "https"})

    assert info["remote_addr"] == "127.0.0.1"
    assert info["scheme"] == "http"


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, "--forwarded-allow-ips", "10.9.9.9", workers=1)
    info = _info(cluster, FORWARDED)

    assert info["remote_addr"] == "127.0.0.1"
    assert info["scheme"] == info["url_scheme"] == "http"
    assert str(info["url"]).startswith("http://")
    assert info["proxy_addr"] is None


# -- access log --------------------------------------------------------------------------------------

COMMON_LOG = re.compile(
    r'^(?P<remote>\S+) - - \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<protocol>HTTP/1\.[01])" (?P<status>\d{3}) '
    r'(?P<size>\d+|-)$', re.MULTILINE)


def test_access_log_has_one_common_log_format_line_per_request(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, "--access-log", workers=1)
    assert cluster.request("/").status == 200
    assert cluster.request("/info?x=1").status == 200
    assert cluster.request("/digest", "POST", body=b"abc").status == 200
    assert cluster.request("/missing").status == 404

    wait_until(lambda: len(COMMON_LOG.findall(cluster.log())) >= 4, 10,
               message=lambda: f"four access log lines in:\n{cluster.log()}")
    time.sleep(0.3)  # the log is written by a background thread: give a duplicate time to show
    lines = list(COMMON_LOG.finditer(cluster.log()))

    assert [(m["remote"], m["method"], m["uri"], m["protocol"], m["status"]) for m in lines] == [
        ("127.0.0.1", "GET", "/", "HTTP/1.1", "200"),
        ("127.0.0.1", "GET", "/info?x=1", "HTTP/1.1", "200"),
        ("127.0.0.1", "POST", "/digest", "HTTP/1.1", "200"),
        ("127.0.0.1", "GET", "/missing", "HTTP/1.1", "404"),
    ]
    assert lines[0]["size"] == "2"  # "ok"
    assert all(m["size"] != "-" for m in lines)


def test_custom_access_log_format_with_duration(start_cluster: StartCluster) -> None:
    fmt = "{method} {uri} {status} {size} {duration_ms}ms pid={pid} ua={user_agent}"
    cluster = start_cluster(APP, "--access-log", "--access-log-format", fmt, workers=1)
    conn = cluster.connection()
    try:
        for n in range(3):
            read_reply(conn, "GET", f"/info?n={n}", headers={"User-Agent": "probe/1.0"})
    finally:
        conn.close()

    custom = re.compile(r"^GET /info\?n=(\d) 200 (\d+) (\d+\.\d)ms pid=(\d+) ua=probe/1\.0$",
                        re.MULTILINE)
    lines = wait_until(lambda: len(custom.findall(cluster.log())) >= 3 and custom.findall(cluster.log()),
                       10, message=lambda: f"three custom lines in:\n{cluster.log()}")
    assert [line[0] for line in lines] == ["0", "1", "2"]
    assert {int(line[3]) for line in lines} == set(cluster.ready_pids.values())
    assert all(0.0 <= float(line[2]) < 10_000 for line in lines)


def test_unknown_access_log_field_is_a_usage_error(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, "--access-log", "--access-log-format", "{remote} {bogus_field}",
                            workers=1, wait=False)

    assert cluster.wait_exit(15) == 2
    log = cluster.log()
    assert "Usage:" in log
    assert re.search(r"Invalid value for '?--access-log-format'?", log), log
    assert "bogus_field" in log
    assert "serving " not in log


def test_access_log_is_off_by_default(limited: ClusterProcess) -> None:
    assert limited.request("/info?quiet=1").status == 200
    time.sleep(0.2)
    assert "/info?quiet=1" not in limited.log()


def test_json_log_format_makes_every_line_a_json_object(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, "--log-format", "json", "--access-log", workers=1)
    assert cluster.request("/info?x=1").status == 200
    wait_until(lambda: '"uri": "/info?x=1"' in cluster.log(), 10,
               message=lambda: f"the access record in:\n{cluster.log()}")

    records = [json.loads(line) for line in cluster.log().splitlines() if line.strip()]

    assert all({"time", "level", "logger", "pid", "message"} <= record.keys() for record in records)
    [access] = [record for record in records if record["logger"] == "flask_cluster.access"]
    assert (access["method"], access["uri"], access["status"]) == ("GET", "/info?x=1", 200)
    assert access["message"].startswith('127.0.0.1 - - [')  # the --access-log-format line too
    assert any(record["message"].startswith("serving tests.hardening_apps.probe on ")
               for record in records)


def test_reload_turns_the_access_log_on_as_flask_run_does(start_cluster: StartCluster) -> None:
    cluster = start_cluster(APP, "--reload", workers=1)

    assert cluster.request("/info?dev=1").status == 200

    wait_until(lambda: COMMON_LOG.search(cluster.log()), 10,
               message=lambda: f"an access log line in:\n{cluster.log()}")
