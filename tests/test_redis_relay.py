"""The broker relay's ordering and buffering, without Redis."""

from __future__ import annotations

import pytest

pytest.importorskip("redis")

from flask_cluster import signing  # noqa: E402
from flask_cluster.master.redis_relay import Order, Outbox, redact  # noqa: E402


def test_a_copy_from_a_resent_write_is_delivered_once() -> None:
    order = Order()
    accepted = [order.accept(host, number) for host, number in
                [(b"a", 1), (b"b", 1), (b"a", 2), (b"a", 1), (b"a", 2), (b"b", 2), (b"a", 3)]]
    assert accepted == [True, True, True, False, False, True, True]
    assert order.missed == 0


def test_a_gap_in_a_hosts_numbers_counts_as_missed() -> None:
    order = Order()
    assert order.accept(b"a", 5)  # the first number seen from a host is where we joined
    assert order.accept(b"a", 9)
    assert order.missed == 3


def test_the_outbox_keeps_order_and_drops_past_its_bound() -> None:
    outbox = Outbox("me", limit=2)
    assert outbox.put("t", b"1", None) and outbox.put("t", b"2", 7)
    assert not outbox.put("t", b"3", None)
    assert outbox.dropped == 1
    batch = outbox.peek(10, 0)
    assert [(f[b"n"], f[b"p"], f[b"k"]) for f in batch] == [(b"1", b"1", b""), (b"2", b"2", b"7")]
    outbox.sent(1)
    assert outbox.put("t", b"4", None)
    assert [f[b"n"] for f in outbox.peek(10, 0)] == [b"2", b"3"]  # dropped ones get no number


def test_a_signature_covers_topic_and_payload() -> None:
    signed = signing.sign(b"key", "topic", b"data")
    assert signing.verify(b"key", "topic", signed) == b"data"
    assert signing.verify(b"other", "topic", signed) is None
    assert signing.verify(b"key", "topix", signed) is None
    assert signing.verify(b"key", "topic", signed[:-1] + b"x") is None
    assert signing.verify(b"key", "topic", b"short") is None


def test_a_missing_key_is_one_clear_error() -> None:
    with pytest.raises(signing.SigningKeyMissing, match="CLUSTER_BROKER_SECRET"):
        signing.key_of({})
    assert signing.key_of({"SECRET_KEY": "s"}) == b"s"
    assert signing.key_of({"SECRET_KEY": "s", "CLUSTER_BROKER_SECRET": b"b"}) == b"b"


def test_passwords_stay_out_of_logs() -> None:
    assert redact("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact("rediss://user:pw@h/0") == "rediss://user:***@h/0"
    assert redact("redis://h:6379") == "redis://h:6379"
