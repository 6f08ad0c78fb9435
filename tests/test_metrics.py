"""``--metrics`` without processes: the worker's recorder, the master's totals that never go
back, the 10-second window's quantiles, and the command line without the extra."""

from __future__ import annotations

import importlib.util
import time
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from flask.cli import ScriptInfo

from flask_cluster.cli import cluster_run
from flask_cluster.master.recent import RecentWindow, quantile_ms
from flask_cluster.master.totals import Totals
from flask_cluster.request_counters import (
    BODY_BYTES_IN,
    BODY_BYTES_OUT,
    BUCKETS,
    DURATION_BUCKETS,
    DURATION_SUM_US,
    METHODS,
    STATUS_CLASSES,
    requests,
    status_method_word,
)
from flask_cluster.scoreboard import REQUESTS, Scoreboard
from flask_cluster.worker.request_metrics import request_metrics


def answered(status: int, body: bytes = b"") -> Any:
    """What the recorder reads of a finished :class:`Response`."""
    return SimpleNamespace(status_code=status, body_bytes=len(body))


def environ(method: str, length: str | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": method}
    if length is not None:
        env["CONTENT_LENGTH"] = length
    return env


def test_the_recorder_counts_by_status_class_and_method() -> None:
    board = Scoreboard(4)
    record, flush = request_metrics(board, 2)
    now = time.monotonic()
    record(now - 0.003, environ("GET"), answered(200, b"hello"))
    record(now, environ("POST", "12"), answered(404))
    record(now, environ("BREW"), answered(0))  # no status sent, an unknown method
    record(now - 20, environ("GET", "no number"), answered(999))
    assert requests(board.counters(2)) == 0  # published on the heartbeat, not on the way
    flush()

    counts = board.counters(2)
    assert counts[status_method_word(STATUS_CLASSES.index("2xx"), METHODS.index("GET"))] == 1
    assert counts[status_method_word(STATUS_CLASSES.index("4xx"), METHODS.index("POST"))] == 1
    assert counts[status_method_word(STATUS_CLASSES.index("5xx"), METHODS.index("other"))] == 1
    assert counts[status_method_word(STATUS_CLASSES.index("5xx"), METHODS.index("GET"))] == 1
    assert requests(counts) == 4
    assert counts[BODY_BYTES_IN] == 12 and counts[BODY_BYTES_OUT] == 5
    histogram = counts[DURATION_BUCKETS:DURATION_BUCKETS + len(BUCKETS) + 1]
    assert sum(histogram) == 4 and histogram[-1] == 1  # the 20 s one: past the last bound
    assert histogram[BUCKETS.index(0.005)] == 1  # the 3 ms one
    assert 20_003_000 <= counts[DURATION_SUM_US] < 21_000_000
    flush()
    assert board.counters(2) == counts  # nothing twice
    assert board.counters(1) == [0] * len(counts)  # its own slot only


def test_totals_keep_what_an_exited_worker_counted() -> None:
    board = Scoreboard(2)
    totals = Totals(board)
    for slot in (0, 1):
        board.reset(slot, 100 + slot)
        record, flush = request_metrics(board, slot)
        for _ in range(3 + slot):
            record(0.0, environ("GET"), answered(200))
        flush()
    assert requests(totals.current([0, 1])) == 7

    totals.fold(0)  # worker in slot 0 exited; its slot goes to the next worker
    board.reset(0, 200)
    assert requests(totals.current([0, 1])) == 7
    record, flush = request_metrics(board, 0)
    record(0.0, environ("GET"), answered(500))
    flush()
    assert requests(totals.current([0, 1])) == 8

    totals.fold(1)  # and the other, with no successor in its slot yet
    assert requests(totals.current([0])) == 8


def test_quantiles_interpolate_within_a_bucket() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    assert quantile_ms(0.5, counts) is None
    counts[BUCKETS.index(0.005)] = 100  # all between 2.5 and 5 ms
    assert quantile_ms(0.5, counts) == pytest.approx(3.75)
    assert quantile_ms(0.99, counts) == pytest.approx(4.975)
    counts[-1] = 100  # half past the last bound: reported as that bound
    assert quantile_ms(0.99, counts) == BUCKETS[-1] * 1000


def test_the_window_gives_the_rate_of_the_last_seconds() -> None:
    board = Scoreboard(2)
    board.reset(0, 42)
    window = RecentWindow(board)
    window.sample(0.0, [(42, 0)])
    board.set(0, REQUESTS, 50)
    window.sample(1.0, [(42, 0)])
    board.set(0, REQUESTS, 150)
    window.sample(2.0, [(42, 0)])
    assert window.of(42).per_second == 75.0
    for second in range(3, 14):
        window.sample(float(second), [(42, 0)])
    assert window.of(42).per_second == 0.0  # the requests are older than 10 s
    window.sample(14.0, [])
    assert window.of(42).per_second == 0.0 and 42 not in window.samples


def test_metrics_without_the_extra_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "prometheus_client" else real(name, *args))
    result = CliRunner().invoke(cluster_run, ["--metrics", "127.0.0.1:9100"],
                                obj=ScriptInfo(create_app=lambda: None))
    assert result.exit_code == 2
    assert "Error: Invalid value for --metrics: needs prometheus-client: pip install " \
           "'flask-cluster[metrics]'" in result.output


@pytest.mark.parametrize("address", ["9100", "localhost", ":9100", "host:http", "h:70000"])
def test_metrics_address_must_be_host_and_port(address: str) -> None:
    result = CliRunner().invoke(cluster_run, ["--metrics", address],
                                obj=ScriptInfo(create_app=lambda: None))
    assert result.exit_code == 2
    assert f"{address!r} is not HOST:PORT" in result.output
