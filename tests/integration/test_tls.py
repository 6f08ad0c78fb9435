"""TLS with ``--cert``/``--key`` against a real cluster: curl and Python's ``ssl`` as clients,
keep-alive, large bodies both ways, and clients that fail the handshake in different ways.

The certificate is a throwaway self-signed one for ``IP:127.0.0.1``, made with the ``openssl``
command line. Most tests share one single-worker cluster, so "the next request still works"
always means "the same worker survived".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    START_TIMEOUT,
    STARTUP,
    ClusterProcess,
    Reply,
    StartCluster,
    cluster_process,
    read_reply,
    read_until_close,
    wait_until,
)
from tests.hardening_apps.probe import pattern

APP = "tests.hardening_apps.probe"
HEADER_TIMEOUT = 2.0
TICK = 1.0
SLACK = 1.5
HTTPS_ADDRESS = re.compile(r"https://(?P<host>[^:/]+):(?P<port>\d+)")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return Certificate(cert, key)


def wait_started_https(cluster: ClusterProcess, timeout: float = START_TIMEOUT) -> None:
    """``ClusterProcess.wait_started`` for a TLS cluster, whose startup line says https://."""

    def started() -> re.Match[str] | None:
        if cluster.proc.poll() is not None:
            pytest.fail(f"cluster-run exited with {cluster.proc.returncode}:\n{cluster.log()}")
        return STARTUP.search(cluster.log())

    match = wait_until(started, timeout, message=lambda: f"the startup line in:\n{cluster.log()}")
    url = HTTPS_ADDRESS.fullmatch(match["address"])
    assert url is not None, f"a TLS cluster serves https://, not {match['address']}"
    cluster.address = match["address"]
    cluster.master_pid = int(match["pid"])
    cluster.workers = int(match["workers"])
    cluster.host, cluster.port = url["host"], int(url["port"])
    cluster.wait_ready(range(cluster.workers), timeout)


def tls_options(certificate: Certificate) -> tuple[str, ...]:
    return ("--cert", str(certificate.cert), "--key", str(certificate.key),
            "--header-timeout", str(HEADER_TIMEOUT))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory,
                certificate: Certificate) -> Iterator[ClusterProcess]:
    log = tmp_path_factory.mktemp("tls-cluster") / "cluster.log"
    with cluster_process(log, APP, "--workers", "1", "--host", "127.0.0.1", "--port", "0",
                         "--graceful-timeout", "5", *tls_options(certificate)) as cluster:
        wait_started_https(cluster)
        yield cluster


def client_context(certificate: Certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate.cert))


def https(cluster: ClusterProcess, certificate: Certificate,
          timeout: float = 15.0) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(cluster.host, cluster.port, timeout=timeout,
                                       context=client_context(certificate))


def get(cluster: ClusterProcess, certificate: Certificate, path: str) -> Reply:
    conn = https(cluster, certificate)
    try:
        return read_reply(conn, "GET", path, headers={"Connection": "close"})
    finally:
        conn.close()


def worker_pid(cluster: ClusterProcess, certificate: Certificate) -> int:
    reply = get(cluster, certificate, "/info")
    assert reply.status == 200, reply.text
    assert reply.json()["scheme"] == "https"
    return int(reply.json()["pid"])


# -- clients that trust the certificate ----------------------------------------------------------


def test_startup_line_names_the_https_address(tls_cluster: ClusterProcess) -> None:
    assert tls_cluster.address == f"https://127.0.0.1:{tls_cluster.port}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_gets_the_page_over_https(tls_cluster: ClusterProcess, certificate: Certificate) -> None:
    url = f"https://127.0.0.1:{tls_cluster.port}/info"
    done = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--max-time", "20",
                           "--cacert", str(certificate.cert), url],
                          capture_output=True, timeout=30)

    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["scheme"] == info["url_scheme"] == "https"
    assert info["url"] == url


def test_python_ssl_client_keeps_the_connection_alive(tls_cluster: ClusterProcess,
                                                      certificate: Certificate) -> None:
    conn = https(tls_cluster, certificate)
    try:
        first = read_reply(conn, "GET", "/info?n=0")
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        replies = [first, *(read_reply(conn, "GET", f"/info?n={n}") for n in range(1, 6))]
        assert conn.sock is sock, "all six requests went over one TLS connection"
    finally:
        conn.close()

    assert [reply.status for reply in replies] == [200] * 6
    assert [reply.json()["path"] for reply in replies] == [f"/info?n={n}" for n in range(6)]
    assert {reply.json()["scheme"] for reply in replies} == {"https"}
    assert {reply.json()["url_scheme"] for reply in replies} == {"https"}


def _expected(size: int) -> bytes:
    return b"".join(pattern(size))


def test_large_response_arrives_complete_over_tls(tls_cluster: ClusterProcess,
                                                  certificate: Certificate) -> None:
    size = 5 * 1024 * 1024
    conn = https(tls_cluster, certificate)
    try:
        conn.request("GET", f"/bytes/{size}")
        response = conn.getresponse()
        time.sleep(0.5)  # a slow reader: the server's TLS writes back up meanwhile
        body = response.read()
        after = read_reply(conn, "GET", "/info")  # the framing held: the connection is reusable
    finally:
        conn.close()

    assert response.status == 200
    assert int(response.headers["Content-Length"]) == size
    assert len(body) == size
    assert hashlib.sha256(body).digest() == hashlib.sha256(_expected(size)).digest()
    assert after.status == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_body_arrives_complete_over_tls(tls_cluster: ClusterProcess,
                                                certificate: Certificate, framing: str) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # past the 1 MiB spool threshold
    conn = https(tls_cluster, certificate)
    try:
        if framing == "chunked":
            pieces = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]
            conn.request("POST", "/digest", body=iter(pieces), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
            response = conn.getresponse()
            reply = Reply(response.status, {}, response.read())
        else:
            reply = read_reply(conn, "POST", "/digest", body=body)
    finally:
        conn.close()

    assert reply.status == 200, reply.text
    assert reply.json()["size"] == len(body)
    assert reply.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_threads_serve_large_bodies_over_tls(start_cluster: StartCluster,
                                             certificate: Certificate) -> None:
    """With --threads the response crosses from a pool thread to the loop's TLS writes."""
    cluster = start_cluster(APP, "--threads", "4", *tls_options(certificate), workers=1, wait=False)
    wait_started_https(cluster)
    size = 5 * 1024 * 1024 + 3
    upload = os.urandom(2 * 1024 * 1024)

    def fetch() -> bytes:
        conn = https(cluster, certificate)
        try:
            return read_reply(conn, "GET", f"/bytes/{size}").body
        finally:
            conn.close()

    with ThreadPoolExecutor(3) as pool:
        downloads = [pool.submit(fetch) for _ in range(3)]
        conn = https(cluster, certificate)
        try:
            digest = read_reply(conn, "POST", "/digest", body=upload)
        finally:
            conn.close()
        results = [download.result(60) for download in downloads]

    expected = hashlib.sha256(_expected(size)).digest()
    assert [hashlib.sha256(body).digest() for body in results] == [expected] * 3
    assert digest.json()["sha256"] == hashlib.sha256(upload).hexdigest()


# -- clients that fail ----------------------------------------------------------------------------


def test_plain_http_to_the_tls_port_is_closed(tls_cluster: ClusterProcess,
                                              certificate: Certificate) -> None:
    pid = worker_pid(tls_cluster, certificate)
    with socket.create_connection((tls_cluster.host, tls_cluster.port), timeout=10) as sock:
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        data, end = read_until_close(sock)
        waited = time.monotonic() - started

    assert end in ("close", "reset")
    assert waited < HEADER_TIMEOUT, "closed at once, not left to the handshake timeout"
    assert not data.startswith(b"HTTP/"), "no plain-text answer on the TLS port"
    assert worker_pid(tls_cluster, certificate) == pid


def test_failed_handshakes_do_not_disturb_a_tls_connection(tls_cluster: ClusterProcess,
                                                           certificate: Certificate) -> None:
    pid = worker_pid(tls_cluster, certificate)
    conn = https(tls_cluster, certificate)
    stalled = socket.create_connection((tls_cluster.host, tls_cluster.port), timeout=10)
    try:
        assert read_reply(conn, "GET", "/info?n=1").status == 200
        sock = conn.sock

        # A client that opened TCP and never finishes its handshake: the loop does not wait.
        stalled.sendall(client_hello_prefix())
        stalled_at = time.monotonic()
        assert read_reply(conn, "GET", "/info?n=2").status == 200

        # Garbage instead of a ClientHello.
        with socket.create_connection((tls_cluster.host, tls_cluster.port), timeout=10) as junk:
            junk.sendall(b"\x16\x03\x01\x00\x20" + bytes(range(32)) + b"\r\n\r\n" * 8)
            started = time.monotonic()
            _data, end = read_until_close(junk)
            assert end in ("close", "reset")
            assert time.monotonic() - started < HEADER_TIMEOUT, "refused at once"
        assert read_reply(conn, "GET", "/info?n=3").status == 200

        # A client that does not trust our certificate aborts the handshake with an alert.
        with socket.create_connection((tls_cluster.host, tls_cluster.port), timeout=10) as raw:
            untrusting = ssl.create_default_context()
            with pytest.raises(ssl.SSLCertVerificationError):
                untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
        assert read_reply(conn, "GET", "/info?n=4").status == 200

        # A client that closes in the middle of the handshake.
        with socket.create_connection((tls_cluster.host, tls_cluster.port), timeout=10) as gone:
            gone.sendall(client_hello_prefix())
        assert read_reply(conn, "GET", "/info?n=5").status == 200
        assert conn.sock is sock, "the good connection lived through all of it"

        # The stalled handshake is cut at the header timeout.
        stalled.settimeout(HEADER_TIMEOUT + TICK + 2 * SLACK)
        _data, end = read_until_close(stalled)
        waited = time.monotonic() - stalled_at
        assert end in ("close", "reset")
        assert HEADER_TIMEOUT - 0.1 <= waited <= HEADER_TIMEOUT + TICK + SLACK, waited
    finally:
        conn.close()
        stalled.close()

    assert worker_pid(tls_cluster, certificate) == pid


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_without_the_ca_fails_and_the_server_serves_on(tls_cluster: ClusterProcess,
                                                            certificate: Certificate) -> None:
    pid = worker_pid(tls_cluster, certificate)
    done = subprocess.run(["curl", "--silent", "--max-time", "20",
                           f"https://127.0.0.1:{tls_cluster.port}/"],
                          capture_output=True, timeout=30)

    assert done.returncode == 60, "curl: peer certificate cannot be authenticated"
    assert worker_pid(tls_cluster, certificate) == pid


def client_hello_prefix() -> bytes:
    """The first bytes of a real ClientHello (record header and the start of the handshake)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "a TLS handshake record"
    return hello[: len(hello) // 2]
