"""Signatures on broadcasts that cross the broker.

Whoever can write to the broker could otherwise make every worker on every host unpickle
bytes of their choosing, which runs code. So with ``--broker`` the sending worker signs
``topic`` and the pickled payload with the app's key, the masters relay the signed bytes
untouched, and each receiving worker checks the signature before it unpickles anything. The key
lives in the app's config, which only the workers load: a master never holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import Any, Final

SIGNATURE_BYTES: Final = hashlib.sha256().digest_size


class SigningKeyMissing(RuntimeError):
    """A worker of a cluster with ``--broker`` found no key in the app's config."""


def key_of(config: Mapping[str, Any]) -> bytes:
    """``CLUSTER_BROKER_SECRET``, else ``SECRET_KEY``, as bytes."""
    key = config.get("CLUSTER_BROKER_SECRET") or config.get("SECRET_KEY")
    if not key:
        raise SigningKeyMissing("--broker needs a key to sign messages with: set "
                                "CLUSTER_BROKER_SECRET (or SECRET_KEY) in the app's config")
    return key if isinstance(key, bytes) else str(key).encode()


def _mac(key: bytes, topic: str, payload: bytes | memoryview) -> bytes:
    encoded = topic.encode()
    # the topic's length first, so no (topic, payload) pair signs the same bytes as another
    mac = hmac.new(key, struct.pack("!I", len(encoded)) + encoded, hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def sign(key: bytes, topic: str, payload: bytes) -> bytes:
    """``payload`` with its signature in front."""
    return _mac(key, topic, payload) + payload


def verify(key: bytes, topic: str, signed: bytes) -> bytes | None:
    """The payload ``signed`` carries, or ``None`` when its signature is missing or wrong."""
    if len(signed) < SIGNATURE_BYTES:
        return None
    payload = memoryview(signed)[SIGNATURE_BYTES:]
    if not hmac.compare_digest(signed[:SIGNATURE_BYTES], _mac(key, topic, payload)):
        return None
    return payload.tobytes()
