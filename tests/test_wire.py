"""The messages master and workers exchange: encoding, limits, the gather vocabulary."""

from __future__ import annotations

import pickle
import threading
import typing

import pytest

from flask_cluster import wire

EXAMPLES: list[wire.Message] = [
    wire.Ready(),
    wire.BootFailed("ImportError: no module named 'app'"),
    wire.Retire(),
    wire.Free(),
    wire.Broadcast("cache-clear", pickle.dumps({"key": "users"}), False),
    wire.Gather(7, "pid", pickle.dumps(None), 2.5),
    wire.Reply(3, wire.ERROR, pickle.dumps("KeyError: 'x'")),
    wire.Deliver(12, "cache-clear", b"\x80\x05payload"),
    wire.Ask(3, "pid", b""),
    wire.Gathered(7, [(0, 1000, wire.OK, b"x", ""), (1, 1001, wire.MISSING, None, "")]),
    wire.Publish("cache-clear", b"pickled"),
]


def test_every_kind_has_an_example() -> None:
    assert {type(message) for message in EXAMPLES} == set(typing.get_args(wire.Message))
    assert set(wire.KINDS) == set(typing.get_args(wire.Message))
    assert not set(wire.FROM_WORKER) & set(wire.FROM_MASTER)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda message: type(message).__name__)
def test_round_trip(message: wire.Message) -> None:
    decoded = wire.decode(wire.encode(message))

    assert type(decoded) is type(message)
    assert decoded == message


def test_the_master_decodes_without_importing_app_classes() -> None:
    """The app's data stays pickled bytes: decoding a frame imports nothing of the app's."""
    payload = b"cno_such_app.models\nThing\n."  # a pickle that names an app class
    with pytest.raises(ModuleNotFoundError):
        wire.unpack(payload)  # what only a worker that has the app does

    message = wire.decode(wire.encode(wire.Broadcast("t", payload, True)))

    assert message == wire.Broadcast("t", payload, True)


def test_a_frame_carries_built_in_types_only() -> None:
    """So no frame can name a class for the master to import."""
    with pytest.raises(ValueError):
        wire.encode(wire.Gathered(1, [wire.Answer(0, 1, wire.OK, b"", "")]))  # type: ignore[list-item]


# -- app data -------------------------------------------------------------------------------------


def test_pack_round_trip() -> None:
    data = {"key": "users", "ids": [1, 2, 3]}

    assert wire.unpack(wire.pack(data)) == data


@pytest.mark.parametrize("data", [lambda: None, threading.Lock()], ids=["lambda", "lock"])
def test_unpicklable_data_raises_with_the_reason(data: object) -> None:
    with pytest.raises(wire.MessageError, match=f"cannot pickle {type(data).__name__}: "):
        wire.pack(data)


def test_size_limit() -> None:
    fits = wire.pack(b"x" * 50, limit=100)
    with pytest.raises(wire.MessageError, match=r"message is \d+ bytes pickled, more than the "
                                                r"100 byte limit \(CLUSTER_MAX_MESSAGE_BYTES\)"):
        wire.pack(b"x" * 200, limit=100)

    assert len(fits) <= 100
    assert isinstance(wire.MessageError("x"), ValueError)


def test_limit_of_an_app_config() -> None:
    assert wire.limit_of({}) == wire.MAX_MESSAGE_BYTES
    assert wire.limit_of({"CLUSTER_MAX_MESSAGE_BYTES": "100"}) == 100


# -- gather replies -------------------------------------------------------------------------------


def test_a_reply_that_can_be_sent() -> None:
    status, payload = wire.pack_reply(True, [1, 2], limit=100)

    assert (status, wire.unpack(payload)) == (wire.OK, [1, 2])


def test_a_failed_handler_replies_its_error() -> None:
    status, payload = wire.pack_reply(False, "KeyError: 'x'", limit=100)

    assert (status, wire.unpack(payload)) == (wire.ERROR, "KeyError: 'x'")


@pytest.mark.parametrize(("value", "reason"), [
    (lambda: None, "reply not sent: cannot pickle function"),
    (b"x" * 200, "reply not sent: message is 215 bytes pickled, more than the 100 byte limit"),
])
def test_a_reply_that_cannot_be_sent_becomes_an_error(value: object, reason: str) -> None:
    status, payload = wire.pack_reply(True, value, limit=100)

    assert status == wire.ERROR
    assert wire.unpack(payload).startswith(reason)


def test_unpack_answer() -> None:
    assert wire.unpack_answer((2, 1002, wire.OK, pickle.dumps({"a": 1}), "")) == \
        wire.Answer(2, 1002, wire.OK, {"a": 1})
    assert wire.unpack_answer((3, 1003, wire.MISSING, None, "")) == \
        wire.Answer(3, 1003, wire.MISSING, None, "")
