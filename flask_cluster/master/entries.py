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


def broadcast_fields(topic: str, payload: bytes, skip: int | None) -> Fields:
    return {b"t": topic.encode(), b"p": payload, b"k": b"" if skip is None else b"%d" % skip}


def question_fields(gather_id: int, topic: str, payload: bytes, deadline: float) -> Fields:
    return {b"t": topic.encode(), b"p": payload, b"g": b"%d" % gather_id,
            b"d": repr(deadline).encode()}


def parse_entry(fields: Fields) -> Entry | None:
    try:
        gather = fields.get(b"g")
        skip = fields.get(b"k")
        deadline = float(fields[b"d"]) if gather is not None else 0.0
        if not math.isfinite(deadline):
            return None
        return Entry(fields[b"h"], int(fields[b"n"]), fields[b"t"].decode(), fields[b"p"],
                     int(skip) if skip else None, int(gather) if gather is not None else None,
                     deadline)
    except (KeyError, ValueError):  # UnicodeDecodeError is a ValueError
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
