"""``FlaskCluster`` outside ``cluster-run`` (the calls run in-process, as under ``flask run`` and
the test client), and inside a worker with the messenger played by a recorder."""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, current_app, jsonify

from flask_cluster import FlaskCluster, runtime, wire
from flask_cluster.extension import MAX_MESSAGE_BYTES, GatherIncomplete, MessageError, extension_of


@pytest.fixture
def cluster() -> FlaskCluster:
    return FlaskCluster()


@pytest.fixture
def app(cluster: FlaskCluster) -> Flask:
    app = Flask("cluster_test_app")
    cluster.init_app(app)
    return app


@pytest.fixture(autouse=True)
def outside_cluster_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "current", None)


# -- the extension pattern ------------------------------------------------------------------------


def test_init_app_registers_the_extension(cluster: FlaskCluster, app: Flask) -> None:
    assert extension_of(app) is cluster
    assert app.config["CLUSTER_MAX_MESSAGE_BYTES"] == MAX_MESSAGE_BYTES
    assert not hasattr(cluster, "app")  # per-app state lives in app.extensions


def test_constructor_with_app() -> None:
    app = Flask("direct")
    cluster = FlaskCluster(app)

    assert extension_of(app) is cluster


def test_init_app_keeps_the_apps_own_limit() -> None:
    app = Flask("configured")
    app.config["CLUSTER_MAX_MESSAGE_BYTES"] = 10
    FlaskCluster(app)

    assert app.config["CLUSTER_MAX_MESSAGE_BYTES"] == 10


def test_one_extension_on_two_apps(cluster: FlaskCluster, app: Flask) -> None:
    other = Flask("other")
    cluster.init_app(other)

    assert extension_of(app) is extension_of(other) is cluster


def test_app_without_the_extension() -> None:
    assert extension_of(Flask("plain")) is None


def test_where_am_i_outside_cluster_run(cluster: FlaskCluster) -> None:
    assert cluster.worker_id is None
    assert cluster.worker_count == 1
    assert not cluster.is_worker


def test_decorators_return_the_function(cluster: FlaskCluster) -> None:
    def handler(data: Any) -> None:
        return None

    def hook() -> None:
        return None

    assert cluster.on("t")(handler) is handler
    assert cluster.on_worker_start(hook) is hook
    assert cluster.on_worker_stop(hook) is hook


# -- broadcast, in-process ------------------------------------------------------------------------


def test_broadcast_runs_local_handlers_in_order(cluster: FlaskCluster, app: Flask) -> None:
    calls: list[tuple[str, Any]] = []

    @cluster.on("cache-clear")
    def first(data: Any) -> None:
        calls.append(("first", data))

    @cluster.on("cache-clear")
    def second(data: Any) -> None:
        calls.append(("second", data))

    @cluster.on("other")
    def unrelated(data: Any) -> None:
        calls.append(("unrelated", data))

    with app.app_context():
        assert cluster.broadcast("cache-clear", {"key": "users"}) is None

    assert calls == [("first", {"key": "users"}), ("second", {"key": "users"})]


def test_handlers_get_a_copy_as_a_worker_would(cluster: FlaskCluster, app: Flask) -> None:
    seen: list[Any] = []
    cluster.on("t")(seen.append)
    data = {"items": [1, 2]}

    with app.app_context():
        cluster.broadcast("t", data)

    assert seen == [data]
    assert seen[0] is not data  # pickled and unpickled, as across processes


def test_broadcast_without_self_runs_nothing_here(cluster: FlaskCluster, app: Flask) -> None:
    seen: list[Any] = []
    cluster.on("t")(seen.append)

    with app.app_context():
        cluster.broadcast("t", 1, include_self=False)

    assert seen == []


def test_broadcast_to_a_topic_nobody_handles(cluster: FlaskCluster, app: Flask) -> None:
    with app.app_context():
        cluster.broadcast("nobody-listens", [1, 2, 3])


def test_handler_error_is_logged_and_the_others_still_run(cluster: FlaskCluster, app: Flask,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    @cluster.on("t")
    def broken(data: Any) -> None:
        raise RuntimeError("handler exploded")

    @cluster.on("t")
    def fine(data: Any) -> None:
        ran.append("fine")

    with caplog.at_level(logging.ERROR, logger="flask_cluster"), app.app_context():
        cluster.broadcast("t")  # the caller is not the one to blame: no exception here

    assert ran == ["fine"]
    [record] = [r for r in caplog.records if r.name == "flask_cluster"]
    assert "'t'" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "handler exploded"


def test_broadcast_from_a_view(cluster: FlaskCluster, app: Flask) -> None:
    seen: list[str] = []

    @cluster.on("hello")
    def hello(data: Any) -> None:
        seen.append(f"{current_app.name}: {data}")  # an app context, as in a worker

    @app.post("/notify")
    def notify() -> Any:
        cluster.broadcast("hello", "world")
        return jsonify(worker=cluster.worker_id, count=cluster.worker_count)

    response = app.test_client().post("/notify")

    assert response.get_json() == {"worker": None, "count": 1}
    assert seen == ["cluster_test_app: world"]


# -- gather, in-process ---------------------------------------------------------------------------


def test_gather_returns_the_local_reply(cluster: FlaskCluster, app: Flask) -> None:
    cluster.on("pid")(lambda data: os.getpid())

    with app.app_context():
        assert cluster.gather("pid") == [os.getpid()]


def test_gather_reply_is_the_last_non_none_return(cluster: FlaskCluster, app: Flask) -> None:
    cluster.on("t")(lambda data: "early")
    cluster.on("t")(lambda data: data * 2)
    cluster.on("t")(lambda data: None)

    with app.app_context():
        assert cluster.gather("t", 21) == [42]


def test_gather_without_handlers_is_none(cluster: FlaskCluster, app: Flask) -> None:
    with app.app_context():
        assert cluster.gather("nobody") == [None]


def test_gather_with_a_failing_handler(cluster: FlaskCluster, app: Flask) -> None:
    ran: list[str] = []
    cluster.on("t")(lambda data: 1 / 0)
    cluster.on("t")(lambda data: ran.append("second") or "ok")

    with app.app_context(), pytest.raises(GatherIncomplete) as info:
        cluster.gather("t")

    assert ran == ["second"]
    assert info.value.errors == {0: "ZeroDivisionError: division by zero"}
    assert info.value.missing == []
    assert info.value.replies == {}
    assert "worker 0 failed: ZeroDivisionError: division by zero" in str(info.value)


# -- what cannot be sent --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [lambda: None, threading.Lock()], ids=["lambda", "lock"])
@pytest.mark.parametrize("call", ["broadcast", "gather"])
def test_unpicklable_data_is_refused_with_the_reason(cluster: FlaskCluster, app: Flask,
                                                     call: str, data: Any) -> None:
    ran: list[Any] = []
    cluster.on("t")(ran.append)

    with app.app_context(), pytest.raises(MessageError, match="cannot pickle") as info:
        getattr(cluster, call)("t", data)

    assert isinstance(info.value, ValueError)
    assert type(data).__name__ in str(info.value)
    assert ran == []  # nothing half-sent


@pytest.mark.parametrize("call", ["broadcast", "gather"])
def test_oversize_data_is_refused_with_the_limit(cluster: FlaskCluster, app: Flask, call: str) -> None:
    app.config["CLUSTER_MAX_MESSAGE_BYTES"] = 100
    ran: list[Any] = []
    cluster.on("t")(ran.append)

    with app.app_context():
        getattr(cluster, call)("t", b"x" * 50)  # fits
        with pytest.raises(MessageError, match="more than the 100 byte limit") as info:
            getattr(cluster, call)("t", b"x" * 200)

    assert "CLUSTER_MAX_MESSAGE_BYTES" in str(info.value)
    assert ran == [b"x" * 50]


def test_default_limit_outside_an_app_context(cluster: FlaskCluster) -> None:
    with pytest.raises(MessageError, match=f"more than the {MAX_MESSAGE_BYTES} byte limit"):
        cluster.broadcast("t", b"x" * (MAX_MESSAGE_BYTES + 1))


# -- hooks ----------------------------------------------------------------------------------------


def test_worker_hooks_run_in_order(cluster: FlaskCluster, caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []
    cluster.on_worker_start(lambda: ran.append("start-1"))
    cluster.on_worker_start(lambda: ran.append("start-2"))
    cluster.on_worker_stop(lambda: ran.append("stop-1"))

    @cluster.on_worker_stop
    def broken() -> None:
        raise OSError("pool already closed")

    cluster.on_worker_stop(lambda: ran.append("stop-3"))

    cluster.run_start_hooks()
    with caplog.at_level(logging.ERROR, logger="flask_cluster"):
        cluster.run_stop_hooks()  # one failing stop hook does not keep the others from running

    assert ran == ["start-1", "start-2", "stop-1", "stop-3"]
    assert "pool already closed" in caplog.text


def test_failing_start_hook_raises(cluster: FlaskCluster) -> None:
    """A worker that cannot open its resources must not serve: the worker reports a boot error."""

    @cluster.on_worker_start
    def broken() -> None:
        raise ConnectionRefusedError("database down")

    with pytest.raises(ConnectionRefusedError):
        cluster.run_start_hooks()


# -- inside a worker ------------------------------------------------------------------------------


class RecordingMessenger:
    def __init__(self, answers: list[wire.Answer] | None = None) -> None:
        self.broadcasts: list[tuple[str, Any, bool]] = []
        self.gathers: list[tuple[str, Any, float]] = []
        self.answers = answers or []

    def broadcast(self, topic: str, payload: bytes, include_self: bool) -> None:
        self.broadcasts.append((topic, pickle.loads(payload), include_self))

    def gather(self, topic: str, payload: bytes, timeout: float) -> list[wire.Answer]:
        self.gathers.append((topic, pickle.loads(payload), timeout))
        return self.answers


@pytest.fixture
def in_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingMessenger]:
    messenger = RecordingMessenger()
    monkeypatch.setattr(runtime, "current", runtime.WorkerRuntime(2, messenger, lambda: 4))
    yield messenger


def test_where_am_i_in_a_worker(cluster: FlaskCluster, in_worker: RecordingMessenger) -> None:
    assert cluster.worker_id == 2
    assert cluster.worker_count == 4
    assert cluster.is_worker


def test_broadcast_in_a_worker_goes_to_the_master(cluster: FlaskCluster, app: Flask,
                                                  in_worker: RecordingMessenger) -> None:
    ran: list[Any] = []
    cluster.on("t")(ran.append)

    with app.app_context():
        cluster.broadcast("t", {"a": 1})
        cluster.broadcast("t", None, include_self=False)

    assert in_worker.broadcasts == [("t", {"a": 1}, True), ("t", None, False)]
    assert ran == []  # the handlers run when the master's copy comes back


def test_gather_in_a_worker_orders_replies_by_worker_id(cluster: FlaskCluster, app: Flask,
                                                        in_worker: RecordingMessenger) -> None:
    in_worker.answers = [wire.Answer(1, 11, wire.OK, "one"), wire.Answer(0, 10, wire.OK, "zero"),
                         wire.Answer(2, 12, wire.OK, None)]

    with app.app_context():
        assert cluster.gather("t", "question", timeout=0.5) == ["zero", "one", None]

    assert in_worker.gathers == [("t", "question", 0.5)]


def test_gather_in_a_worker_reports_the_missing_and_the_failed(cluster: FlaskCluster, app: Flask,
                                                               in_worker: RecordingMessenger) -> None:
    in_worker.answers = [wire.Answer(0, 10, wire.OK, "zero"), wire.Answer(1, 11, wire.MISSING, None),
                         wire.Answer(2, 12, wire.ERROR, "KeyError: 'x'"),
                         wire.Answer(3, 13, wire.MISSING, None)]

    with app.app_context(), pytest.raises(GatherIncomplete) as info:
        cluster.gather("t")

    assert info.value.replies == {0: "zero"}
    assert info.value.missing == [1, 3]
    assert info.value.errors == {2: "KeyError: 'x'"}
    assert str(info.value) == "no reply from worker(s) 1, 3; worker 2 failed: KeyError: 'x'"


def test_gather_across_hosts_orders_this_host_first_and_names_the_missing_hosts(
        cluster: FlaskCluster, app: Flask, in_worker: RecordingMessenger) -> None:
    in_worker.answers = [wire.Answer(0, 20, wire.OK, "b0", "host-b"),
                         wire.Answer(1, 11, wire.OK, "a1"), wire.Answer(0, 10, wire.OK, "a0"),
                         wire.Answer(0, 30, wire.OK, "c0", "host-c")]
    with app.app_context():
        assert cluster.gather("t") == ["a0", "a1", "b0", "c0"]

    in_worker.answers = [wire.Answer(0, 10, wire.OK, "a0"),
                         wire.Answer(1, 0, wire.MISSING, None, "host-b"),
                         wire.Answer(0, 20, wire.ERROR, "KeyError: 'x'", "host-b"),
                         wire.Answer(0, 0, wire.MISSING, None, "host-c")]
    with app.app_context(), pytest.raises(GatherIncomplete) as info:
        cluster.gather("t")

    assert info.value.replies == {0: "a0"} and info.value.missing == [] and info.value.errors == {}
    assert info.value.missing_hosts == {"host-b": [1], "host-c": [0]}
    assert info.value.host_errors == {"host-b": {0: "KeyError: 'x'"}}
    assert str(info.value) == ("no reply from host host-b worker(s) 1; no reply from host host-c "
                               "worker(s) 0; host host-b worker 0 failed: KeyError: 'x'")
