"""The wire between the master and its workers: framed messages over a stream pair, connections
passed as file descriptors over a SEQPACKET pair, and the shared-memory scoreboard."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_cluster import ipc, wire
from flask_cluster.ipc import ChannelClosed, MessageChannel, channel_pairs
from flask_cluster.scoreboard import (
    HEARTBEAT_MS,
    IN_FLIGHT,
    PID,
    REQUESTS,
    STARTED_MS,
    Scoreboard,
    now_ms,
)


@pytest.fixture
def pair() -> Iterator[tuple[MessageChannel, MessageChannel]]:
    master_msg, worker_msg, master_fd, worker_fd = channel_pairs()
    master_fd.close()
    worker_fd.close()
    master, worker = MessageChannel(master_msg), MessageChannel(worker_msg)
    yield master, worker
    master.close()
    worker.close()


@pytest.fixture
def handoff() -> Iterator[tuple[socket.socket, socket.socket]]:
    master_msg, worker_msg, master_fd, worker_fd = channel_pairs()
    master_msg.close()
    worker_msg.close()
    yield master_fd, worker_fd
    master_fd.close()
    worker_fd.close()


def frame(message: wire.Message) -> bytes:
    return wire.encode(message)


def receive_all(channel: MessageChannel, count: int, attempts: int = 1000) -> list[bytes]:
    frames: list[bytes] = []
    for _ in range(attempts):
        frames += channel.receive()
        if len(frames) >= count:
            return frames
        os.sched_yield()
    pytest.fail(f"got {len(frames)} of {count} frames")


# -- pairs ----------------------------------------------------------------------------------------


def test_channel_pairs_are_non_blocking_and_of_the_right_kinds() -> None:
    socks = channel_pairs()
    try:
        master_msg, worker_msg, master_fd, worker_fd = socks
        for sock in socks:
            assert not sock.getblocking()
            assert sock.family == socket.AF_UNIX
        assert master_msg.type == worker_msg.type == socket.SOCK_STREAM
        assert master_fd.type == worker_fd.type == socket.SOCK_SEQPACKET
    finally:
        for sock in socks:
            sock.close()


# -- framed messages ------------------------------------------------------------------------------


def test_frames_arrive_whole_and_in_order(pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, worker = pair
    frames = [frame(wire.Deliver(i, "t", b"x" * i)) for i in range(50)]
    for item in frames:
        master.queue(item)
    assert master.pending > 0
    assert master.flush()
    assert master.pending == 0

    assert receive_all(worker, 50) == frames
    assert worker.receive() == []  # nothing more, and no blocking


def test_framing_across_partial_reads(pair: tuple[MessageChannel, MessageChannel]) -> None:
    """The length prefix and the body can each be cut anywhere by the stream."""
    master, worker = pair
    first, second = frame(wire.Ready()), frame(wire.BootFailed("ImportError: no module app"))
    stream = b"".join(ipc.FRAME_HEADER.pack(len(item)) + item for item in (first, second))

    got: list[bytes] = []
    for i, byte in enumerate(stream):
        master.sock.send(bytes([byte]))
        got += worker.receive()
        if i < ipc.FRAME_HEADER.size + len(first) - 1:
            assert got == []  # nothing until the first frame is complete

    assert got == [first, second]


def test_large_frame_crosses_a_full_socket(pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, worker = pair
    big = frame(wire.Deliver(1, "t", os.urandom(3 * 1024 * 1024)))
    master.queue(big)
    master.queue(frame(wire.Ready()))

    got: list[bytes] = []
    for _ in range(10000):
        done = master.flush()  # False while the kernel buffer is full: try again later
        got += worker.receive()
        if done and len(got) == 2:
            break
    assert got == [big, frame(wire.Ready())]


def test_send_now_waits_for_the_peer(pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, worker = pair
    master.queue(frame(wire.Ready()))  # queued earlier: goes out first

    worker.send_now(frame(wire.BootFailed("x")), timeout=5.0)
    master.flush()

    assert receive_all(worker, 1) == [frame(wire.Ready())]
    assert receive_all(master, 1) == [frame(wire.BootFailed("x"))]
    assert not worker.sock.getblocking()  # non-blocking again afterwards


def test_oversize_frame_is_refused_before_queueing(monkeypatch: pytest.MonkeyPatch,
                                                   pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, _ = pair
    monkeypatch.setattr(ipc, "MAX_FRAME", 100)

    with pytest.raises(ValueError, match="exceeds the 100 byte frame limit"):
        master.queue(b"x" * 101)
    assert master.pending == 0


def test_eof_is_channel_closed(pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, worker = pair
    master.queue(frame(wire.Ready()))
    master.flush()
    master.close()

    assert receive_all(worker, 1) == [frame(wire.Ready())]  # what was sent still arrives
    with pytest.raises(ChannelClosed):
        worker.receive()


def test_sending_to_a_closed_peer_is_channel_closed(pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, worker = pair
    worker.close()

    master.queue(frame(wire.Ready()))
    with pytest.raises(ChannelClosed):
        master.flush()
    with pytest.raises(ChannelClosed):
        master.send_now(frame(wire.Ready()), timeout=1.0)


def test_last_frames_before_eof_are_delivered(pair: tuple[MessageChannel, MessageChannel]) -> None:
    master, worker = pair
    master.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * ipc.RECV_CHUNK)
    last = frame(wire.Deliver(1, "t", b""))
    room = ipc.RECV_CHUNK - 2 * ipc.FRAME_HEADER.size - len(last)  # for the first frame
    size = room
    while len(body := frame(wire.Deliver(0, "t", b"x" * size))) != room:
        size -= len(body) - room  # the encoding's overhead depends on the size a little
    master.queue(body)
    master.queue(last)
    assert master.pending == ipc.RECV_CHUNK
    assert master.flush()
    master.close()  # a worker's last words, then it exits

    try:
        got = worker.receive()
    except ChannelClosed:
        got = []
    assert got == [body, last]


# -- passing connections --------------------------------------------------------------------------


def test_connection_passes_to_the_worker(handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    client, accepted = socket.socketpair()
    with client, accepted:
        assert ipc.send_connections(master_end, [accepted.fileno()], [b"127.0.0.1 4321"])
    # The master closed its copy: the worker's is the connection now.
        [(conn, peer)] = ipc.receive_connections(worker_end, 8, socket.AF_UNIX)
        assert peer == ("127.0.0.1", "4321")  # from accept(): no getpeername in the worker
        with conn:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            conn.settimeout(5)
            assert conn.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            client.settimeout(5)
            assert client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_a_worker_hands_a_connection_back_the_same_way(
        handoff: tuple[socket.socket, socket.socket]) -> None:
    """The hand-off channel runs both ways: a worker sends a kept-alive connection back on its
    end, the master reads it on its own, apart from what the master passed the worker, and the
    bytes the client sent meanwhile (still in the kernel's buffer) come with it."""
    master_end, worker_end = handoff
    client, served = socket.socketpair()
    with client, served:
        assert ipc.send_connections(master_end, [served.fileno()], [b"10.0.0.9 80"])
        [(conn, _)] = ipc.receive_connections(worker_end, 8, socket.AF_UNIX)
        client.sendall(b"GET /next HTTP/1.1\r\n\r\n")  # not read by the worker
        with conn:
            assert ipc.send_connections(worker_end, [conn.fileno()], [b"10.0.0.9 80"])
        # The worker's copy is closed: the client's connection stays open.

        [(fd, peer)] = ipc.receive_passed(master_end, 8)
        assert peer == b"10.0.0.9 80"
        assert ipc.receive_passed(worker_end, 8) == []  # nothing turned back toward the worker
        [(back, back_peer)] = ipc.wrap_passed([(fd, peer)], socket.AF_UNIX)
        with back:
            assert back_peer == ("10.0.0.9", "80")
            back.settimeout(5)
            assert back.recv(100) == b"GET /next HTTP/1.1\r\n\r\n"
            back.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            client.settimeout(5)
            assert client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_one_packet_carries_several_connections_and_their_peers(
        handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        fds = [theirs.fileno() for _, theirs in pairs]
        peers = [b"10.0.0.1 1", b"::1 2", b""]
        assert ipc.send_connections(master_end, fds, peers)

        received = ipc.receive_connections(worker_end, 1, socket.AF_UNIX)  # one packet
        assert [peer for _, peer in received] == [("10.0.0.1", "1"), ("::1", "2"), ("", "")]
        for (conn, _), (ours, _) in zip(received, pairs, strict=True):
            with conn:
                ours.sendall(b"x")
                conn.settimeout(5)
                assert conn.recv(1) == b"x"
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_receive_takes_at_most_the_limit(handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        for _, theirs in pairs:
            assert ipc.send_connections(master_end, [theirs.fileno()], [b"127.0.0.1 4321"])

        first = ipc.receive_connections(worker_end, 3, socket.AF_UNIX)
        second = ipc.receive_connections(worker_end, 3, socket.AF_UNIX)
        for conn, _peer in first + second:
            conn.close()

        assert (len(first), len(second)) == (3, 2)
        # nothing waiting: no blocking
        assert ipc.receive_connections(worker_end, 3, socket.AF_UNIX) == []
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_full_queue_says_try_another_worker(handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sent = 0
        while ipc.send_connections(master_end, [theirs.fileno()], [b"127.0.0.1 4321"]):
            sent += 1
            assert sent < 100000, "the queue never filled"

        taken = ipc.receive_connections(worker_end, 16, socket.AF_UNIX)
        for conn, _peer in taken:
            conn.close()
        assert ipc.send_connections(master_end, [theirs.fileno()], [b"127.0.0.1 4321"])  # room again


def test_worker_gone_is_channel_closed(handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    worker_end.close()
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(ChannelClosed):
        ipc.send_connections(master_end, [theirs.fileno()], [b"127.0.0.1 4321"])


def test_master_gone_is_channel_closed(handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    master_end.close()

    with pytest.raises(ChannelClosed):
        ipc.receive_connections(worker_end, 8, socket.AF_UNIX)


def test_connections_passed_before_the_master_died_are_kept(
        handoff: tuple[socket.socket, socket.socket]) -> None:
    master_end, worker_end = handoff
    pairs = [socket.socketpair() for _ in range(2)]
    for _, theirs in pairs:
        ipc.send_connections(master_end, [theirs.fileno()], [b"127.0.0.1 4321"])
    master_end.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the dropped sockets, if any
        try:
            got = ipc.receive_connections(worker_end, 8, socket.AF_UNIX)
        except ChannelClosed:
            got = []
        gc.collect()
    try:
        assert len(got) == 2
    finally:
        for conn, _peer in got:
            conn.close()
        for a, b in pairs:
            a.close()
            b.close()


# -- the scoreboard -------------------------------------------------------------------------------


def test_scoreboard_slots_start_clean() -> None:
    board = Scoreboard(4)
    board.set(2, REQUESTS, 99)
    board.set(2, IN_FLIGHT, 3)

    before = now_ms()
    board.reset(2, pid=4242)

    snapshot = board.snapshot(2)
    assert snapshot["pid"] == 4242
    assert snapshot["requests"] == 0
    assert snapshot["in_flight"] == 0
    assert before <= snapshot["heartbeat_ms"] == snapshot["started_ms"] <= now_ms()
    assert board.get(2, PID) == 4242
    assert board.get(2, HEARTBEAT_MS) == board.get(2, STARTED_MS)


def test_scoreboard_slots_are_independent() -> None:
    board = Scoreboard(3)
    for slot in range(3):
        board.reset(slot, pid=100 + slot)
        board.set(slot, IN_FLIGHT, slot * 10)

    assert [board.get(slot, IN_FLIGHT) for slot in range(3)] == [0, 10, 20]
    assert [board.get(slot, PID) for slot in range(3)] == [100, 101, 102]


def test_scoreboard_worker_count_and_free_slots() -> None:
    board = Scoreboard(3)
    board.worker_count = 2

    assert board.worker_count == 2
    assert board.free_slot({0, 2}) == 1
    with pytest.raises(RuntimeError, match="no free scoreboard slot"):
        board.free_slot({0, 1, 2})


def test_scoreboard_is_shared_with_a_forked_child() -> None:
    board = Scoreboard(2)
    board.reset(1, pid=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, in 3.12+
        pid = os.fork()
    if pid == 0:  # the child: write as a worker does, then leave without running pytest's exit
        try:
            board.set(1, REQUESTS, 7)
            board.set(1, PID, os.getpid())
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert board.get(1, REQUESTS) == 7  # the master sees the child's writes
    assert board.get(1, PID) == pid


def test_a_peek_counts_the_connections_of_a_packet_without_taking_them(
        handoff: tuple[socket.socket, socket.socket]) -> None:
    """What a worker near its descriptor limit reads first, to make room for a whole packet."""
    master_end, worker_end = handoff
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        assert ipc.peek_passed(worker_end) == 0  # nothing waits
        assert ipc.send_connections(master_end, [theirs.fileno() for _, theirs in pairs],
                                    [b"", b"", b""])  # a Unix socket's peers are empty
        open_before = len(os.listdir("/proc/self/fd"))

        assert ipc.peek_passed(worker_end) == 3
        assert len(os.listdir("/proc/self/fd")) == open_before  # no descriptor installed
        taken = ipc.receive_connections(worker_end, 8, socket.AF_UNIX)
        assert len(taken) == 3
        for sock, _ in taken:
            sock.close()
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


DROPPED_AT_THE_LIMIT = """
import os, resource, socket
from flask_cluster import ipc

_, _, master_end, worker_end = ipc.channel_pairs()
clients = [socket.socket() for _ in range(5)]
assert ipc.send_connections(master_end, [c.fileno() for c in clients], [b"10.0.0.1 1"] * 5)
lowest_free = os.dup(0)
os.close(lowest_free)
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 2, hard))  # room for two
dropped = []
passed = ipc.receive_passed(worker_end, 8, dropped.append)
print(len(passed), dropped)
"""


def test_connections_the_kernel_drops_at_the_descriptor_limit_are_reported() -> None:
    """Regression: MSG_CTRUNC was ignored, so the master counted the dropped connections as
    waiting for their worker forever."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", DROPPED_AT_THE_LIMIT], cwd=root,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "[3]"]
