"""Signatures on messages that cross the broker.

Whoever can write to the broker could otherwise make every worker on every host unpickle
bytes of their choosing, which runs code. So with ``--broker`` the sending worker signs
``topic`` and the pickled payload with the app's key, the masters relay the signed bytes
untouched, and each receiving worker checks the signature before it unpickles anything. The key
lives in the app's config, which only the workers load: a master never holds it.

A signature also covers what the message is for (a broadcast, a gather's question, a reply), so
one cannot be passed off as another, and a :class:`Stamp` (who sent it, their count, when), so a
receiver can refuse a signed message copied back into the stream (:mod:`..worker.replay`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

SIGNATURE_BYTES: Final = hashlib.sha256().digest_size
BROADCAST: Final = b"b"
ASK: Final = b"a"
REPLY: Final = b"r"
_STAMP: Final = struct.Struct("!16sQq")


class SigningKeyMissing(RuntimeError):
    """A worker of a cluster with ``--broker`` found no key in the app's config."""


class Stamp(NamedTuple):
    sender: bytes  # 16 random bytes per sending process
    counter: int  # counts up per sender and purpose
    time_ms: int  # the sender's wall clock


class Stamper:
    """The stamps one process puts on what it signs."""

    def __init__(self) -> None:
        self.sender = os.urandom(16)
        self._counters: dict[bytes, int] = {}

    def next(self, purpose: bytes) -> Stamp:
        counter = self._counters.get(purpose, 0) + 1
        self._counters[purpose] = counter
        return Stamp(self.sender, counter, int(time.time() * 1000))


def key_of(config: Mapping[str, Any]) -> bytes:
    """``CLUSTER_BROKER_SECRET``, else ``SECRET_KEY``, as bytes."""
    key = config.get("CLUSTER_BROKER_SECRET") or config.get("SECRET_KEY")
    if not key:
        raise SigningKeyMissing("--broker needs a key to sign messages with: set "
                                "CLUSTER_BROKER_SECRET (or SECRET_KEY) in the app's config")
    return key if isinstance(key, bytes) else str(key).encode()


def _mac(key: bytes, purpose: bytes, topic: str, body: bytes | memoryview) -> bytes:
    encoded = topic.encode()
    # the topic's length first, so no (topic, payload) pair signs the same bytes as another
    mac = hmac.new(key, purpose + struct.pack("!I", len(encoded)) + encoded, hashlib.sha256)
    mac.update(body)
    return mac.digest()


def sign(key: bytes, purpose: bytes, topic: str, payload: bytes, stamp: Stamp) -> bytes:
    """``payload`` with its stamp and, in front, the signature of both."""
    body = _STAMP.pack(*stamp) + payload
    return _mac(key, purpose, topic, body) + body


def verify(key: bytes, purpose: bytes, topic: str, signed: bytes) -> tuple[Stamp, bytes] | None:
    """The stamp and payload ``signed`` carries, or ``None`` when its signature is missing or
    wrong."""
    if len(signed) < SIGNATURE_BYTES + _STAMP.size:
        return None
    body = memoryview(signed)[SIGNATURE_BYTES:]
    if not hmac.compare_digest(signed[:SIGNATURE_BYTES], _mac(key, purpose, topic, body)):
        return None
    stamp = Stamp(*_STAMP.unpack_from(body))
    return stamp, body[_STAMP.size:].tobytes()
