"""The channels between the master and a worker: fd passing and framing.

Two socket pairs per worker, made before the fork:

* the **hand-off** channel, ``AF_UNIX``/``SOCK_SEQPACKET``: the master passes accepted
  connections' file descriptors (``SCM_RIGHTS`` via :func:`socket.send_fds`), a batch per
  packet with the peers' addresses as its data. The master keeps a copy of the worker's end
  too, so that connections a dead worker never took can be taken back and served by another.
  It runs both ways: a worker hands kept-alive connections back the same way (its peers and
  descriptors in one packet), unread, so nothing but the descriptor needs to travel;
* the **message** channel, ``AF_UNIX``/``SOCK_STREAM`` (what :func:`multiprocessing.Pipe` is on
  POSIX, used directly so both ends can be non-blocking): frames of a 4-byte big-endian length and
  a body; what a body means is :mod:`flask_cluster.wire`'s business.
"""

from __future__ import annotations

import logging
import resource
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flask_cluster")

FRAME_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
# Under glibc's mmap threshold (128 KiB): recv() allocates this much for every read and
# shrinks it to what came, and at 256 KiB each read of a 13-byte Free cost the master an mmap,
# an mremap and a munmap (strace). Bigger messages take a few reads more.
RECV_CHUNK = 64 * 1024

class ChannelClosed(Exception):
    """The other end of a channel is gone (the master or the worker died)."""


def channel_pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(master message end, worker message end, master hand-off end, worker hand-off end)."""
    master_msg, worker_msg = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_fd, worker_fd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (master_msg, worker_msg, master_fd, worker_fd):
        sock.setblocking(False)
    return master_msg, worker_msg, master_fd, worker_fd


class MessageChannel:
    """Framed, non-blocking messages over one end of a socket pair, with an outgoing buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._in = bytearray()
        self._out = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> int:
        """Bytes queued but not yet taken by the kernel."""
        return len(self._out)

    def queue(self, frame: bytes) -> None:
        if len(frame) > MAX_FRAME:
            raise ValueError(f"message of {len(frame)} bytes exceeds the {MAX_FRAME} byte frame limit")
        self._out += FRAME_HEADER.pack(len(frame))
        self._out += frame

    def flush(self) -> bool:
        """Send what the kernel takes now; True when nothing is left queued."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            del self._out[:sent]
        return True

    def send_now(self, frame: bytes, timeout: float = 5.0) -> None:
        """Queue and push out everything queued, waiting for the peer up to ``timeout``."""
        self.queue(frame)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(self._out)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        finally:
            self.sock.setblocking(False)
        self._out.clear()

    def receive(self) -> list[bytes]:
        """Every complete frame readable now; raises :class:`ChannelClosed` at end of stream,
        once the frames that came before it have been returned."""
        ended = False
        while True:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            if not data:
                ended = True  # the peer's last words may be in what we read: return them first
                break
            self._in += data
            if len(data) < RECV_CHUNK:
                break
        frames = []
        view = self._in
        start = 0
        while len(view) - start >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(view, start)
            end = start + FRAME_HEADER.size + length
            if end > len(view):
                break
            frames.append(bytes(view[start + FRAME_HEADER.size:end]))
            start = end
        del self._in[:start]
        if ended and not frames:
            raise ChannelClosed("end of stream")
        return frames

    def close(self) -> None:
        self.sock.close()


MAX_FDS_PER_PACKET = 64  # well under the kernel's SCM_MAX_FD (253)


def _packet_fds() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_FDS_PER_PACKET
    return max(1, min(MAX_FDS_PER_PACKET, soft // 16))


# Most descriptors sent in one packet: fewer under a low descriptor limit (set before the
# master starts; workers inherit it). A receiver takes a packet whole or loses what does not
# fit, so a worker near its limit must be able to make room for a whole one.
PACKET_FDS = _packet_fds()
Peer = tuple[str, str]  # the client's (address, port); ("", "") on a Unix socket


def encode_peer(address: Any) -> bytes:
    """What ``accept()`` said of the client, so the worker need not ask the kernel again."""
    if isinstance(address, tuple):
        return f"{address[0]} {address[1]}".encode()
    return b""


def send_connections(channel: socket.socket, fds: list[int], peers: list[bytes]) -> bool:
    """Pass connections to a worker in one packet (their peers as its data, each ended by a
    newline, so the data alone says how many descriptors the packet carries). False when the
    worker's queue is full (try another worker); :class:`ChannelClosed` when it is gone."""
    try:
        socket.send_fds(channel, [b"\n".join(peers) + b"\n"], fds)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise ChannelClosed(str(exc)) from exc
    return True


def peek_passed(channel: socket.socket) -> int:
    """How many descriptors the next packet on ``channel`` carries, without taking them (0 when
    none waits, or the channel is gone: the receive that follows says so). Reading the data
    alone installs no descriptor: the packet, and every descriptor in it, stays queued."""
    try:
        return channel.recv(64 * MAX_FDS_PER_PACKET, socket.MSG_PEEK).count(b"\n")
    except OSError:
        return 0


def log_dropped(count: int) -> None:
    log.warning("the kernel dropped %d passed connection(s): this process is at its "
                "descriptor limit (ulimit -n %s)", count, _nofile())


def receive_passed(channel: socket.socket, limit: int,
                   on_dropped: Callable[[int], None] = log_dropped) -> list[tuple[int, bytes]]:
    """Descriptors passed by :func:`send_connections` and each one's peer as sent, from up to
    ``limit`` packets; :class:`ChannelClosed` if the sender is gone and nothing came before.

    A process at its descriptor limit gets fewer descriptors than were sent (``MSG_CTRUNC``):
    the kernel closes the rest, resetting their clients. ``on_dropped`` is told how many, so
    they are not counted as waiting forever; it cannot bring them back (see
    :func:`peek_passed` to check for room first)."""
    passed: list[tuple[int, bytes]] = []
    for _ in range(limit):
        try:
            data, fds, flags, _addr = socket.recv_fds(channel, 64 * MAX_FDS_PER_PACKET,
                                                      MAX_FDS_PER_PACKET)
        except BlockingIOError:
            break
        except OSError as exc:
            if passed:
                break  # these are ours to serve; the next call reports the sender gone
            raise ChannelClosed(str(exc)) from exc
        if not data and not fds:
            if passed:
                break  # these are ours to serve; the next call reports the sender gone
            raise ChannelClosed("end of stream")
        if flags & socket.MSG_CTRUNC and data.count(b"\n") > len(fds):
            on_dropped(data.count(b"\n") - len(fds))
        peers = data.split(b"\n")
        passed += [(fd, peers[index] if index < len(peers) else b"")
                   for index, fd in enumerate(fds)]
    return passed


def receive_connections(channel: socket.socket, limit: int, family: socket.AddressFamily,
                        on_dropped: Callable[[int], None] = log_dropped
                        ) -> list[tuple[socket.socket, Peer]]:
    """Connections passed by the master, from up to ``limit`` packets; :class:`ChannelClosed`
    if it is gone and nothing came before that. ``on_dropped``: see :func:`receive_passed`."""
    return wrap_passed(receive_passed(channel, limit, on_dropped), family)


def wrap_passed(passed: list[tuple[int, bytes]], family: socket.AddressFamily
                ) -> list[tuple[socket.socket, Peer]]:
    """Descriptors and peers from :func:`receive_passed` as sockets and ``(host, port)``."""
    connections: list[tuple[socket.socket, Peer]] = []
    for fd, peer in passed:
        host, _, port = peer.decode("latin-1").partition(" ")
        # family and type given: socket() would otherwise ask the kernel for both
        connections.append((socket.socket(family, socket.SOCK_STREAM, 0, fd), (host, port)))
    return connections


def _nofile() -> str:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
