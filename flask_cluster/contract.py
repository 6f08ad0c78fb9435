"""What the master and a worker agree on across the fork: what a worker is given (its sockets,
its number, its slot on the scoreboard) and the exit code by which it says it could not boot.

With the wire types (:mod:`.wire`) this is all that the two process sides share: the master
starts a worker through the :data:`RunWorker` it is handed by the command line, and never
imports the worker's code.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .scoreboard import Scoreboard

EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # the app could not be loaded or a start hook failed: do not respawn


@dataclass
class WorkerSockets:
    """The worker's ends of its channels, and what it listens on."""

    messages: socket.socket
    handoff: socket.socket | None  # connections from the master (all it accepts, or moved ones)
    listener: socket.socket | None  # shared: accept on the master's socket
    reuseport: tuple[Any, socket.AddressFamily] | None  # reuseport: bind our own
    family: socket.AddressFamily  # of the master's listener, so of every connection
    # round-robin and least-busy with --threads 1: the master's listener, accepted on only
    # while the master leaves it to the workers (worker/accepting.py)
    backlog: socket.socket | None = None


@dataclass
class WorkerSpec:
    """Everything a worker is started with; built in the master before the fork."""

    worker_id: int
    slot: int
    config: Config
    load_app: Callable[[], Any]
    app_name: str
    scoreboard: Scoreboard
    sockets: WorkerSockets
    server_address: tuple[str, str]
    master_pid: int


RunWorker = Callable[[WorkerSpec], int]  # runs in the forked child; returns its exit code
