"""What the masters write to Redis and read back, as bytes; reading never trusts them.

Whoever can write to Redis can write anything there, so a master reads every field as
untrusted: a malformed entry is ``None`` (the caller drops and counts it), never an exception in
the master's loop, and nothing here unmarshals or unpickles. Payloads stay opaque bytes; the
workers check their signatures.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Final, NamedTuple

from .. import wire

Fields = dict[bytes, bytes]
_ANSWER: Final = struct.Struct("!qqBI")  # worker id, pid, status, payload length (NONE: None)
_NONE: Final = 0xFFFFFFFF
_STATUSES: Final[tuple[wire.Status, ...]] = (wire.OK, wire.ERROR, wire.MISSING)


class Entry(NamedTuple):
    """One stream entry: a broadcast, or a gather's question when ``gather_id`` is set."""

    host: bytes
    number: int  # counts up per host
    topic: str
    payload: bytes
    skip: int | None  # the pid that asked not to get its own broadcast
    gather_id: int | None
    deadline: float  # of a question, in time.time() seconds


# Two fields an entry, the envelope in one line of text and the payload: redis-py packs and
# parses each field in Python, and that is most of what a broadcast costs the broker link.
# A broadcast: b"b HOST NUMBER SKIP TOPIC" (SKIP "-" for none); a gather's question:
# b"q HOST NUMBER GATHER_ID DEADLINE TOPIC". The topic is last: it may hold spaces.


def broadcast_fields(host: bytes, number: int, topic: str, payload: bytes,
                     skip: int | None) -> Fields:
    skipped = b"-" if skip is None else b"%d" % skip
    return {b"m": b"b %s %d %s %s" % (host, number, skipped, topic.encode()), b"p": payload}


def question_fields(host: bytes, number: int, gather_id: int, topic: str, payload: bytes,
                    deadline: float) -> Fields:
    return {b"m": b"q %s %d %d %s %s" % (host, number, gather_id, repr(deadline).encode(),
                                         topic.encode()), b"p": payload}


def parse_entry(fields: Fields) -> Entry | None:
    try:
        kind, rest = fields[b"m"].split(b" ", 1)
        if kind == b"b":
            host, number, skip, topic = rest.split(b" ", 3)
            return Entry(host, int(number), topic.decode(), fields[b"p"],
                         None if skip == b"-" else int(skip), None, 0.0)
        if kind == b"q":
            host, number, gather_id, deadline, topic = rest.split(b" ", 4)
            if not math.isfinite(float(deadline)):
                return None
            return Entry(host, int(number), topic.decode(), fields[b"p"], None, int(gather_id),
                         float(deadline))
    except (KeyError, ValueError):  # a missing field, too few words, not a number, not UTF-8
        return None
    return None


def pack_answers(answers: list[wire.WireAnswer]) -> bytes:
    parts = []
    for worker_id, pid, status, payload, _host in answers:
        parts.append(_ANSWER.pack(worker_id, pid, _STATUSES.index(status),
                                  _NONE if payload is None else len(payload)))
        parts.append(payload or b"")
    return b"".join(parts)


def parse_answers(data: bytes, host: str) -> list[wire.WireAnswer] | None:
    """The answers ``host`` packed, each marked with ``host``."""
    answers: list[wire.WireAnswer] = []
    offset = 0
    try:
        while offset < len(data):
            worker_id, pid, status, length = _ANSWER.unpack_from(data, offset)
            offset += _ANSWER.size
            payload = None
            if length != _NONE:
                if offset + length > len(data):
                    return None
                payload = data[offset:offset + length]
                offset += length
            answers.append((worker_id, pid, _STATUSES[status], payload, host))
    except (struct.error, IndexError):
        return None
    return answers


def parse_workers(announcement: bytes) -> list[int] | None:
    """The worker ids a host announced, from ``{"workers": [...]}``."""
    try:
        workers = json.loads(announcement)["workers"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(workers, list) or not all(type(worker) is int for worker in workers):
        return None
    return workers


def announcement(workers: list[int], pid: int) -> bytes:
    return json.dumps({"workers": workers, "pid": pid}).encode()
