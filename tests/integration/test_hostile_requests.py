"""No bytes a client sends can kill a worker: generated request lines against a live cluster.

Hypothesis builds requests from all four request-target forms of RFC 9112 3.2, arbitrary method
tokens and non-tokens, arbitrary bytes in the target and in header values, and random header
sets; each goes raw to a real cluster over loopback. After every case the client must have seen
one complete status line that is not a 500 (a 500 would be an error of ours), the workers must be
the same processes, and a normal request must be served. Run with ``--threads 1`` (the app on
the loop thread) and ``--threads 2`` (the pool), whose failure paths differ.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import ClusterProcess, StartCluster, cluster_process, read_until_close, wait_until

APP = "tests.hardening_apps.probe"
CASES = 250  # per thread mode; about 2 s each on a quiet machine
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")
SERVER_STATUSES = {400, 404, 405, 413, 414, 417, 431, 501, 505}  # ours and Flask's refusals
counted: dict[int, int] = {}  # cases run, by the port of the cluster they ran against


@pytest.fixture(scope="module", params=["1", "2"], ids=["threads-1", "threads-2"])
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    log = tmp_path_factory.mktemp("hostile") / "cluster.log"
    with cluster_process(log, APP, "--workers", "2", "--threads", request.param,
                         "--host", "127.0.0.1", "--port", "0") as running:
        running.wait_started()
        running.wait_ready([0, 1])
        yield running


def exchange(cluster: ClusterProcess, raw: bytes) -> bytes:
    """Send ``raw``, end our side, and read everything until the server closes."""
    with socket.create_connection((cluster.host, cluster.port), timeout=15) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused and closed before all of it was sent: what was answered still counts
        data, _ = read_until_close(sock)
    return data


def served_normally(cluster: ClusterProcess) -> int:
    """A normal request is served; returns the pid of the worker that served it."""
    data = exchange(cluster, b"GET /info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])


# -- generated requests ------------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
tokens = st.text(TCHARS, min_size=1, max_size=12).map(str.encode)
known_methods = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT",
                                 b"PATCH", b"TRACE", b"PURGE", b"PRI", b"get"])
methods = st.one_of(  # mostly methods that get past the method check, so targets get tested
    known_methods,
    known_methods,
    known_methods,
    tokens,
    st.binary(min_size=0, max_size=12).filter(lambda b: b" " not in b and b"\r\n" not in b),
)
target_bytes = st.binary(max_size=24).map(lambda b: b.replace(b" ", b"%20").replace(b"\r", b"")
                                           .replace(b"\n", b""))
hosts = st.one_of(st.sampled_from([b"a", b"example.com", b"[::1]", b"127.0.0.1", b"", b"[::1",
                                   b"]x", b"u@h", b"h:1:2"]), target_bytes)
ports = st.one_of(st.just(b""), st.integers(0, 99999).map(lambda n: b":%d" % n),
                  st.just(b":"), st.just(b":x"))
absolute_form = st.builds(lambda scheme, host, port, rest: scheme + b"://" + host + port + rest,
                          st.sampled_from([b"http", b"https", b"HTTP", b"s", b"ftp", b""]), hosts,
                          ports, st.one_of(target_bytes, target_bytes.map(lambda b: b"/" + b)))
targets = st.one_of(  # the absolute form twice: it has the most ways to go wrong
    target_bytes.map(lambda b: b"/" + b),  # origin form
    absolute_form,
    absolute_form,
    st.builds(lambda host, port: host + port, hosts, ports),  # authority form
    st.just(b"*"),  # asterisk form
    target_bytes,  # anything at all
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2",
                            b"HTTP/0.9", b"HTTP/x", b""])
field_names = st.one_of(st.sampled_from([b"Host", b"Expect", b"Connection", b"Upgrade",
                                         b"X-Forwarded-For", b"X_Forwarded_For", b"Cookie"]),
                        tokens)
field_values = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
fields = st.lists(st.tuples(field_names, field_values), max_size=4)


def request_bytes(method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]],
                  with_host: bool) -> bytes:
    line = b" ".join(part for part in (method, target, version) if part)
    block = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    host = b"Host: localhost\r\n" if with_host else b""
    return line + b"\r\n" + host + block + b"\r\n"


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=methods, target=targets, version=versions, headers=fields,
       with_host=st.sampled_from([True, True, True, False]))
# The requests that killed workers before, always tried first:
@example(b"CONNECT", b"example.com:443", b"HTTP/1.1", [], True)
@example(b"GET", b"http://a:99999/", b"HTTP/1.1", [], True)
@example(b"GET", b"http://[::1/x", b"HTTP/1.1", [], True)
@example(b"GET", b"http:///x", b"HTTP/1.1", [], True)
@example(b"PUT", b"s://]ufd/:", b"HTTP/1.1", [], True)
def test_no_generated_request_harms_a_worker(cluster: ClusterProcess, method: bytes, target: bytes,
                                            version: bytes, headers: list[tuple[bytes, bytes]],
                                            with_host: bool) -> None:
    pids = set(cluster.worker_pids())
    raw = request_bytes(method, target, version, headers, with_host)

    reply = exchange(cluster, raw)

    match = STATUS_LINE.match(reply)
    assert match, f"no status line for {raw!r}: {reply[:120]!r}"
    status = int(match.group(1))
    assert status < 300 or status in SERVER_STATUSES, (raw, reply[:300])
    served_normally(cluster)
    assert set(cluster.worker_pids()) == pids, f"a worker was replaced after {raw!r}"
    counted[cluster.port] = counted.get(cluster.port, 0) + 1


def test_cases_ran(cluster: ClusterProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """Says how many generated cases reached the live cluster above (hypothesis may stop early
    only when it has exhausted the strategies, which these cannot be)."""
    ran = counted.get(cluster.port, 0)
    with capsys.disabled():
        print(f"\n{ran} generated requests against a live cluster, no worker harmed")
    assert ran >= CASES // 2


# -- named attacks -------------------------------------------------------------------------------


def test_twenty_connects_in_a_row_kill_no_worker(cluster: ClusterProcess) -> None:
    pids = set(cluster.worker_pids())

    for _ in range(20):
        reply = exchange(cluster, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 501 "), reply[:200]

    served_by = {served_normally(cluster) for _ in range(20)}
    assert served_by <= pids
    assert set(cluster.worker_pids()) == pids
    assert cluster.log().count("refused a request from 127.0.0.1") >= 20


@pytest.mark.parametrize("target", [b"http://a:99999/", b"http://[::1/x", b"http:///x"])
def test_absolute_forms_that_crashed_workers_get_400(cluster: ClusterProcess, target: bytes) -> None:
    pids = set(cluster.worker_pids())

    reply = exchange(cluster, b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % target)

    assert reply.startswith(b"HTTP/1.1 400 ")
    served_normally(cluster)
    assert set(cluster.worker_pids()) == pids


def test_absolute_form_target_gives_path_query_and_host(cluster: ClusterProcess) -> None:
    reply = exchange(cluster, b"GET http://example.org:8080/info?x=1 HTTP/1.1\r\n"
                              b"Host: ignored.example\r\nConnection: close\r\n\r\n")

    assert reply.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert seen["path"] == "/info?x=1"
    assert seen["host"] == "example.org:8080"


def test_a_method_llhttp_does_not_know_reaches_the_app(cluster: ClusterProcess) -> None:
    reply = exchange(cluster, b"-BLARGH /info HTTP/1.1\r\nHost: localhost\r\n\r\n")

    assert reply.startswith(b"HTTP/1.1 405 ")  # Flask's answer: /info takes GET and POST


def test_a_request_that_kills_its_worker_is_not_replayed(start_cluster: StartCluster,
                                                         tmp_path: Path) -> None:
    crash_log = tmp_path / "crashes"
    cluster = start_cluster(APP, workers=2, env={"CRASH_LOG": str(crash_log)})
    cluster.wait_ready([0, 1])

    reply = exchange(cluster, b"POST /exit HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")

    assert reply == b""  # the worker died mid-request: a close, not an answer
    [dead] = map(int, crash_log.read_text().split())
    wait_until(lambda: len(pids := cluster.worker_pids()) == 2 and dead not in pids, timeout=30)
    for _ in range(4):
        served_normally(cluster)
    assert crash_log.read_text().split() == [str(dead)]  # run once: not replayed elsewhere
