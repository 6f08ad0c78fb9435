"""What the master and its workers say to each other: the message types, their encoding, limits.

The one module both sides share (:mod:`flask_cluster.ipc` moves the frames; this module says
what a frame means). Each kind of message is a small ``NamedTuple``; a frame holds
``marshal.dumps((kind code, fields))``. marshal can carry built-in types only, so the master
decodes every frame without importing, let alone running, anything of the app's: app data
travels inside as ``payload`` bytes, pickled by :func:`pack` in the sending worker and unpickled
by :func:`unpack` in the receiving ones. (Named tuples rather than dataclasses: a frame's fields
become the message with one ``tuple`` construction, which is what the broadcast fan-out pays
per receiver.)
"""

from __future__ import annotations

import marshal
import pickle
from collections.abc import Mapping
from typing import Any, Final, Literal, NamedTuple

from .ipc import MessageChannel

MAX_MESSAGE_BYTES: Final = 1024 * 1024
"""The largest pickled ``data`` a broadcast or gather may carry (``CLUSTER_MAX_MESSAGE_BYTES``)."""


class MessageError(ValueError):
    """``data`` cannot be sent: it does not pickle, or it is larger than the limit."""


class BrokerBufferFull(RuntimeError):
    """The broker has been unreachable for ``--broker-buffer`` broadcasts: this one is refused
    rather than lost. The ones already accepted are delivered once it is back."""


# -- the gather status vocabulary -----------------------------------------------------------------

Status = Literal["ok", "error", "missing"]
OK: Final = "ok"            # the handlers ran; the value is the reply
ERROR: Final = "error"      # a handler raised or the reply could not be sent; the value is why
MISSING: Final = "missing"  # no answer: the worker died or did not answer in time


class Answer(NamedTuple):
    """One worker's answer to a gather, as :meth:`FlaskCluster.gather` reads it."""

    worker_id: int
    pid: int
    status: Status
    value: Any  # the reply for OK, the error text for ERROR, None for MISSING
    host: str = ""  # with --broker, the host of a worker on another host; "" on the asker's


WireAnswer = tuple[int, int, Status, bytes | None, str]
"""An :class:`Answer` as the master relays it: ``(worker_id, pid, status, pickled value, host)``."""


# -- worker -> master -----------------------------------------------------------------------------

class Ready(NamedTuple):
    """The app is loaded and the start hooks ran: send connections."""


class BootFailed(NamedTuple):
    """The app could not be loaded; sent just before the worker exits. The master prints the
    first traceback it gets, so a cluster of N workers shows it once, not N times."""

    reason: str
    traceback: str = ""


class Retire(NamedTuple):
    """Served ``--max-requests``: replace me gracefully."""


class Free(NamedTuple):
    """A request just ended and nothing else is in flight: sent only while the master holds
    connections for a free worker (the scoreboard's HOLDING word), so it learns "free" the
    moment it becomes true, not a heartbeat later."""


class Broadcast(NamedTuple):
    topic: str
    payload: bytes
    include_self: bool


class Gather(NamedTuple):
    request_id: int  # the asker's own number, echoed in Gathered
    topic: str
    payload: bytes
    timeout: float


class Reply(NamedTuple):
    gather_id: int  # the master's number, from Ask
    status: Status
    payload: bytes


# -- master -> worker -----------------------------------------------------------------------------

class Deliver(NamedTuple):
    """A broadcast, numbered by the master in the one order every worker sees."""

    seq: int
    topic: str
    payload: bytes


class Ask(NamedTuple):
    """A gather's question, to every live worker."""

    gather_id: int
    topic: str
    payload: bytes


class Gathered(NamedTuple):
    """Every answer to the asker's gather, in worker id order."""

    request_id: int
    answers: list[WireAnswer]


class Publish(NamedTuple):
    """Broadcast this for the master (``cluster-ctl broadcast``): with ``--broker`` only a
    worker holds the key to sign it with."""

    topic: str
    payload: bytes


Message = (Ready | BootFailed | Retire | Broadcast | Gather | Reply | Deliver | Ask | Gathered
           | Publish | Free)
FROM_WORKER: Final = (Ready, BootFailed, Retire, Broadcast, Gather, Reply, Free)
FROM_MASTER: Final = (Deliver, Ask, Gathered, Publish)
KINDS: Final[tuple[type[Message], ...]] = FROM_WORKER + FROM_MASTER
_CODES: Final[dict[type[Message], int]] = {kind: code for code, kind in enumerate(KINDS)}


def encode(message: Message) -> bytes:
    """The frame for ``message``; ``ValueError`` if a field is not a built-in type."""
    return marshal.dumps((_CODES[type(message)], tuple(message)))


def decode(frame: bytes) -> Message:
    code, fields = marshal.loads(frame)
    # tuple.__new__ rather than _make: a receiver pays this per broadcast, and frames come
    # only from our own side of a private socket pair, so their length needs no check
    message: Message = tuple.__new__(KINDS[code], fields)
    return message


def receive(channel: MessageChannel) -> list[Message]:
    """Every message readable now; :class:`~flask_cluster.ipc.ChannelClosed` once the peer is
    gone and its last messages were returned."""
    return [decode(frame) for frame in channel.receive()]


# -- app data -------------------------------------------------------------------------------------

def limit_of(config: Mapping[str, Any]) -> int:
    """The message size limit an app configured."""
    return int(config.get("CLUSTER_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES))


def pack(data: Any, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """``data`` as a message payload; :class:`MessageError` with the reason when it cannot be."""
    try:
        payload = pickle.dumps(data, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise MessageError(f"cannot pickle {type(data).__name__}: {exc}") from exc
    if len(payload) > limit:
        raise MessageError(f"message is {len(payload)} bytes pickled, more than the {limit} "
                           "byte limit (CLUSTER_MAX_MESSAGE_BYTES)")
    return payload


def unpack(payload: bytes) -> Any:
    return pickle.loads(payload)


def pack_reply(ok: bool, value: Any, limit: int) -> tuple[Status, bytes]:
    """A handler's outcome as a gather reply. Never raises: a reply that cannot be sent
    becomes an error the asker reads."""
    if ok:
        try:
            return OK, pack(value, limit)
        except MessageError as exc:
            value = f"reply not sent: {exc}"
    return ERROR, pickle.dumps(str(value), pickle.HIGHEST_PROTOCOL)


def unpack_answer(answer: WireAnswer) -> Answer:
    worker_id, pid, status, payload, host = answer
    return Answer(worker_id, pid, status, unpack(payload) if payload is not None else None, host)
