"""Starting a worker process (its channels, the fork, descriptor hygiene in the child) and
reading how it ended.

The child keeps its own ends of its channels (and the listener when it accepts on it) and
nothing else of the master's; it never returns into the master's code.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import ipc
from ..config import Config
from ..contract import EXIT_BOOT_ERROR, RunWorker, WorkerSockets, WorkerSpec
from ..listeners import close_quietly
from ..scoreboard import Scoreboard
from .roster import Death
from .signals import default_handlers
from .worker_handle import WorkerHandle


class Spawner:
    def __init__(self, config: Config, load_app: Callable[[], Any], app_name: str,
                 scoreboard: Scoreboard, listener: socket.socket, master_pid: int,
                 run_worker: RunWorker) -> None:
        self.config = config
        self.run_worker = run_worker
        self.load_app = load_app
        self.app_name = app_name
        self.scoreboard = scoreboard
        self.listener = listener
        self.master_pid = master_pid

    def spawn(self, worker_id: int, others: Iterable[WorkerHandle],
              close: list[socket.socket | None], shed: list[Callable[[], object]]) -> WorkerHandle:
        """Fork worker ``worker_id``. In the child, ``close`` and every channel of ``others``
        are closed and each of ``shed`` is called before the worker runs."""
        config, listener = self.config, self.listener
        slot = self.scoreboard.free_slot({handle.slot for handle in others})
        self.scoreboard.reset(slot, 0)
        # Every mode has a hand-off channel: with shared and reuseport it carries only what
        # comes back (kept-alive connections moved between workers).
        master_msg, worker_msg, master_fd, worker_fd = ipc.channel_pairs()
        shared = config.balance == "shared"
        backlog = listener if config.workers_accept_when_busy else None
        sockets = WorkerSockets(
            messages=worker_msg,
            handoff=worker_fd,
            listener=listener if shared else None,
            reuseport=(listener.getsockname(), listener.family)
            if config.balance == "reuseport" else None,
            family=listener.family,
            backlog=backlog,
        )
        spec = WorkerSpec(worker_id, slot, config, self.load_app, self.app_name, self.scoreboard,
                          sockets, self._server_address(), self.master_pid)
        close = [*close, master_msg, master_fd, None if shared or backlog else listener]
        for handle in others:
            close += [handle.channel.sock, handle.handoff, handle.reclaim]
        pid = fork_worker(lambda: self.run_worker(spec), close, shed)
        worker_msg.close()
        self.scoreboard.set(slot, 0, pid)
        handle = WorkerHandle(worker_id, slot, pid, ipc.MessageChannel(master_msg), master_fd,
                              self.scoreboard)
        # Our copy of the worker's end: what it never took can be taken back once it is dead.
        handle.reclaim = worker_fd
        return handle

    def _server_address(self) -> tuple[str, str]:
        if self.listener.family == socket.AF_UNIX:
            return "localhost", ""
        host, port = self.listener.getsockname()[:2]
        return host, str(port)


def fork_worker(run: Callable[[], int], close: Iterable[socket.socket | None],
                shed: Iterable[Callable[[], object]]) -> int:
    """Fork; in the child close ``close``, call each of ``shed``, then exit with ``run()``'s
    code. Returns the child's pid (in the master)."""
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        default_handlers()
        for sock in close:
            close_quietly(sock)
        for step in shed:
            step()
        code = run()
    except BaseException:  # noqa: BLE001 - nothing may escape into the master's code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reaped() -> Iterator[tuple[int, int]]:
    """Children that have exited, with their wait status: ``waitpid(-1, WNOHANG)`` until none."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def decode_status(status: int) -> Death:
    """What ``waitpid`` said of a worker, as the roster reads it."""
    if os.WIFSIGNALED(status):
        return Death(signal=os.WTERMSIG(status))
    code = os.WEXITSTATUS(status)
    return Death(code=code, boot_error=code == EXIT_BOOT_ERROR)
