"""The broker relay's ordering, buffering and signing, without Redis."""

from __future__ import annotations

import pytest

pytest.importorskip("redis")

from flask_cluster import signing  # noqa: E402
from flask_cluster.master import entries  # noqa: E402
from flask_cluster.master.broker_link import Outbox, redact  # noqa: E402
from flask_cluster.master.redis_relay import Order, Unconfirmed  # noqa: E402
from flask_cluster.worker.replay import COPY, STALE, ReplayGuard  # noqa: E402

STAMP = signing.Stamp(b"s" * 16, 1, 1_000_000)


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


def test_the_links_outbox_keeps_order_until_redis_took_it() -> None:
    outbox = Outbox()
    outbox.put([("s", {b"p": b"1"}, 1), ("inbox", {b"p": b"r"}, 0)])
    outbox.put([("s", {b"p": b"2"}, 2)])
    assert [number for _stream, _fields, number in outbox.peek(2, 0)] == [1, 0]
    outbox.sent(2)
    assert [number for _stream, _fields, number in outbox.peek(10, 0)] == [2]


def test_unconfirmed_entries_are_kept_until_confirmed_and_full_is_raised_and_lowered() -> None:
    changes: list[bool] = []
    unconfirmed = Unconfirmed(limit=2, on_full=changes.append)
    assert [unconfirmed.add(lambda n: {b"p": b"%d" % n})[0] for _ in range(3)] == [1, 2, 3]
    assert changes == [True]  # at the bound, and the one sent meanwhile is kept, not dropped
    unconfirmed.confirmed(1)
    assert [number for number, _fields in unconfirmed] == [2, 3]
    unconfirmed.confirmed(3)
    assert changes == [True, False] and len(unconfirmed) == 0


def test_a_signature_covers_purpose_topic_stamp_and_payload() -> None:
    signed = signing.sign(b"key", signing.BROADCAST, "topic", b"data", STAMP)
    assert signing.verify(b"key", signing.BROADCAST, "topic", signed) == (STAMP, b"data")
    assert signing.verify(b"other", signing.BROADCAST, "topic", signed) is None
    assert signing.verify(b"key", signing.ASK, "topic", signed) is None
    assert signing.verify(b"key", signing.BROADCAST, "topix", signed) is None
    assert signing.verify(b"key", signing.BROADCAST, "topic", signed[:-1] + b"x") is None
    forged_stamp = signed[:signing.SIGNATURE_BYTES + 20] + b"\x09" + signed[signing.SIGNATURE_BYTES + 21:]
    assert signing.verify(b"key", signing.BROADCAST, "topic", forged_stamp) is None
    assert signing.verify(b"key", signing.BROADCAST, "topic", b"short") is None


def test_a_stamped_copy_or_a_stale_stamp_is_refused() -> None:
    now = [1_000_000]
    guard = ReplayGuard(window_ms=600_000, clock=lambda: now[0])
    first, second = STAMP, STAMP._replace(counter=2)
    assert guard.refuse(signing.BROADCAST, first) is None
    assert guard.refuse(signing.BROADCAST, second) is None
    assert guard.refuse(signing.BROADCAST, first) == COPY
    assert guard.refuse(signing.BROADCAST, second) == COPY
    assert guard.refuse(signing.ASK, first) is None  # each purpose counts on its own
    assert guard.refuse(signing.BROADCAST, STAMP._replace(sender=b"t" * 16, time_ms=399_999)) \
        == STALE
    now[0] += 600_001
    assert guard.refuse(signing.BROADCAST, STAMP._replace(counter=3)) == STALE
    assert guard.refuse(signing.BROADCAST, STAMP._replace(sender=b"u" * 16, counter=9,
                                                          time_ms=now[0])) is None
    assert len(guard) == 1  # the senders silent for a window are forgotten


def test_a_missing_key_is_one_clear_error() -> None:
    with pytest.raises(signing.SigningKeyMissing, match="CLUSTER_BROKER_SECRET"):
        signing.key_of({})
    assert signing.key_of({"SECRET_KEY": "s"}) == b"s"
    assert signing.key_of({"SECRET_KEY": "s", "CLUSTER_BROKER_SECRET": b"b"}) == b"b"


def test_passwords_stay_out_of_logs() -> None:
    assert redact("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact("rediss://user:pw@h/0") == "rediss://user:***@h/0"
    assert redact("redis://h:6379") == "redis://h:6379"


def test_what_the_masters_write_reads_back() -> None:
    fields = entries.broadcast_fields(b"host-a", 7, "a topic", b"data", 42)
    assert entries.parse_entry(fields) == entries.Entry(b"host-a", 7, "a topic", b"data", 42,
                                                        None, 0.0)
    assert entries.parse_entry(entries.broadcast_fields(b"h", 1, "", b"", None)) == \
        entries.Entry(b"h", 1, "", b"", None, None, 0.0)
    question = entries.question_fields(b"host-a", 8, 3, "q", b"?", 1.5)
    assert entries.parse_entry(question) == entries.Entry(b"host-a", 8, "q", b"?", None, 3, 1.5)
    answers = [(0, 10, "ok", b"x", ""), (1, 0, "missing", None, ""), (2, 12, "error", b"", "")]
    assert entries.parse_answers(entries.pack_answers(answers), "b") == [  # type: ignore[arg-type]
        (0, 10, "ok", b"x", "b"), (1, 0, "missing", None, "b"), (2, 12, "error", b"", "b")]
    assert entries.parse_workers(entries.announcement([0, 1], 99)) == [0, 1]


@pytest.mark.parametrize("fields", [
    {}, {b"m": b"b x 1 - t"}, {b"p": b""}, {b"m": b"b x one - t", b"p": b""},
    {b"m": b"b x 1 - \xff", b"p": b""}, {b"m": b"b x 1 pid t", b"p": b""},
    {b"m": b"b x 1 -", b"p": b""}, {b"m": b"q x 1 1 nan t", b"p": b""},
    {b"m": b"q x 1 1 t", b"p": b""}, {b"m": b"z x 1 - t", b"p": b""}, {b"m": b"b", b"p": b""},
])
def test_an_entry_no_master_wrote_is_none_not_an_exception(fields: dict[bytes, bytes]) -> None:
    assert entries.parse_entry(fields) is None


def test_answers_and_announcements_no_master_wrote_are_none() -> None:
    packed = entries.pack_answers([(0, 10, "ok", b"payload", "")])  # type: ignore[list-item]
    assert entries.parse_answers(packed[:-1], "b") is None  # the payload cut short
    assert entries.parse_answers(packed[:5], "b") is None  # the header cut short
    assert entries.parse_answers(packed[:16] + b"\x09" + packed[17:], "b") is None  # no status 9
    for announcement in (b"{", b"[]", b'{"workers": "0"}', b'{"workers": [true]}', b"\xff"):
        assert entries.parse_workers(announcement) is None
