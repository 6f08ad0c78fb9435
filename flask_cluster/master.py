"""The master: binds once, forks workers, hands them connections, supervises them.

Signal handlers only record the signal; the loop acts on it (gunicorn's arbiter does the same).
The master never imports the app: workers load it after the fork, so a reload picks up new code.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from . import ipc, wire
from .backoff import Backoff
from .channels import WorkerChannels
from .config import Config
from .control import ControlError, ControlServer, control_path, execute
from .cpus import usable_cpus
from .dispatch import Dispatcher
from .handle import WorkerHandle, describe_status
from .hub import Hub
from .listeners import close_quietly, describe, open_listener, stop_listening
from .proctitle import set_title
from .scoreboard import (
    HEARTBEAT_MS,
    IN_FLIGHT,
    REQUESTS,
    RSS_KIB,
    Scoreboard,
    now_ms,
)
from .tls import server_context
from .watch import SourceWatcher
from .worker import EXIT_BOOT_ERROR, Worker, WorkerSockets

log = logging.getLogger("flask_cluster.master")

EXIT_CLEAN = 0
EXIT_APP_LOAD_ERROR = 3
EXIT_CRASH_LOOP = 4
MAX_BOOT_CRASHES = 5  # workers dying before they are ready, in a row, before the master gives up
KILL_GRACE = 2.0  # after the polite signal, how long before SIGKILL
MEMORY_CHECK_INTERVAL = 1.0
HOUSEKEEPING = 0.1  # seconds between checks of timers, heartbeats, memory and deadlines
RESPONSIVE_MS = 1500  # a worker's loop beats every 0.5 s; older than this, it is busy
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


class MasterExit(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Master:
    def __init__(self, config: Config, load_app: Callable[[], Any], app_name: str) -> None:
        self.config = config
        self.load_app = load_app
        self.app_name = app_name
        self.workers: dict[int, WorkerHandle] = {}  # by pid
        self.target = config.workers or usable_cpus()
        self.scoreboard = Scoreboard(slots=max(64, self.target * 4))
        self.selector = selectors.DefaultSelector()
        self.signals: deque[int] = deque()
        self.listener: socket.socket | None = None
        self.inherited = False
        self._next_memory_check = 0.0
        self._next_housekeeping = 0.0
        self._reap_due = False  # SIGCHLD came: reap on this pass
        self.dispatcher: Dispatcher | None = None  # round-robin and least-busy only
        self.channels = WorkerChannels(self.selector, self._on_message, self._replace)
        self.hub = Hub(self.channels.send, lambda: self._live)
        self._message_handlers: dict[type[wire.Message], Callable[[WorkerHandle, Any], None]] = {
            wire.Ready: lambda handle, _: self._ready(handle),
            wire.BootFailed: self._boot_failed,
            wire.Retire: self._served_max_requests,
        }
        self.respawn_at: dict[int, float] = {}  # worker_id -> when to spawn it again
        self.backoff = Backoff()
        self._restarts: dict[int, int] = {}  # worker_id -> restarts so far, for status
        self.boot_crashes = 0
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit: MasterExit | None = None
        self.reload_queue: deque[int] = deque()  # worker ids still to replace in a rolling reload
        self.address = ""
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.last_error: str | None = None  # the last reload or boot failure, for status
        self.control: ControlServer | None = None
        self.watcher = SourceWatcher(os.getcwd()) if config.reload else None
        # Checked here so a bad certificate fails at start with a clear message; each worker
        # loads its own after the fork, so a rolling reload picks up renewed certificates.
        self.tls = server_context(config.cert, config.key) if config.cert else None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- life ---------------------------------------------------------------------------------

    def run(self) -> int:
        set_title(f"flask-cluster master [{self.app_name}]")
        config = self.config
        self.listener, self.inherited = open_listener(config.host, config.port, config.uds,
                                                      reuseport=config.balance == "reuseport")
        self.address = describe(self.listener, tls=self.tls is not None)
        try:
            self._open_control()  # before the pid file: a failure here leaves nothing behind
        except ControlError:
            self._close_listener()
            raise
        self._write_pid()
        self._install_signals()
        if self._master_accepts:
            self.dispatcher = Dispatcher(self.listener, self.selector, config.balance,
                                         self._dispatchable, self._lost,
                                         serving_blocks=config.threads == 1)
            self.dispatcher.start()
        self.scoreboard.worker_count = self.target
        for worker_id in range(self.target):
            self._spawn(worker_id)
        print(f"flask-cluster: serving {self.app_name} on {self.address} with {self.target} "
              f"worker{'s' if self.target != 1 else ''} (balance {config.balance}, "
              f"threads {config.threads}), master pid {self.pid}", file=sys.stderr, flush=True)
        try:
            while not self._finished():
                self._loop_once()
        finally:
            self._cleanup()
        if self.exit is not None and self.exit.code != EXIT_CLEAN:
            print(f"flask-cluster: {self.exit}", file=sys.stderr, flush=True)
            return self.exit.code
        return EXIT_CLEAN

    @property
    def _master_accepts(self) -> bool:
        return self.config.balance in ("round-robin", "least-busy")

    def _finished(self) -> bool:
        return self.stopping and not self.workers

    def _loop_once(self) -> None:
        timeout = self._next_timeout()
        for key, mask in self.selector.select(timeout):
            callback = key.data
            callback(key.fileobj, mask)
        if self.signals:
            self._handle_signals()
        now = time.monotonic()
        if self._reap_due or now >= self._next_housekeeping:
            self._reap_due = False
            self._reap()
        if self.hub.pending:
            self.hub.expire(now)
        if self.dispatcher is not None and self.dispatcher.paused:
            self.dispatcher.retry()
        if now >= self._next_housekeeping:
            # Not after every wake-up: under a stream of connections the master wakes
            # thousands of times a second, and none of this needs that.
            self._next_housekeeping = now + HOUSEKEEPING
            self._housekeeping(now)
        if self.channels.unflushed:
            self.channels.flush_all()

    def _housekeeping(self, now: float) -> None:
        self._check_workers(now)
        self._respawn_due(now)
        if self.watcher is not None and not self.stopping and self.watcher.changed():
            log.info("source changed: reloading")
            self.reload()
        if self.stopping and now >= self.stop_deadline:
            self._kill_all(signal.SIGKILL)

    def _next_timeout(self) -> float:
        deadlines = [self._next_housekeeping, *self.respawn_at.values()]
        for deadline in (self.hub.next_deadline(),
                         self.dispatcher.next_deadline() if self.dispatcher else None):
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - time.monotonic())

    # -- workers ------------------------------------------------------------------------------

    def _spawn(self, worker_id: int) -> WorkerHandle:
        slot = self.scoreboard.free_slot({handle.slot for handle in self.workers.values()})
        self.scoreboard.reset(slot, 0)
        master_msg, worker_msg, master_fd, worker_fd = ipc.channel_pairs()
        if not self._master_accepts:
            master_fd.close()
            worker_fd.close()
        config = self.config
        listener = self.listener
        assert listener is not None
        sockets = WorkerSockets(
            messages=worker_msg,
            handoff=worker_fd if self._master_accepts else None,
            listener=listener if config.balance == "shared" else None,
            reuseport=(listener.getsockname(), listener.family)
            if config.balance == "reuseport" else None,
            family=listener.family,
        )
        worker = Worker(worker_id, slot, config, self.load_app, self.app_name, self.scoreboard,
                        sockets, self._server_address(), self.pid)
        pid = os.fork()
        if pid == 0:
            self._become_worker(worker, keep={worker_msg, worker_fd, listener}
                                if config.balance == "shared" else {worker_msg, worker_fd},
                                drop=[master_msg, master_fd])
        worker_msg.close()
        self.scoreboard.set(slot, 0, pid)
        handle = WorkerHandle(worker_id, slot, pid, ipc.MessageChannel(master_msg),
                              master_fd if self._master_accepts else None, self.scoreboard)
        if self._master_accepts:
            handle.reclaim = worker_fd
        self.workers[pid] = handle
        self.channels.watch(handle)
        return handle

    def _become_worker(self, worker: Worker, keep: set[socket.socket],
                       drop: list[socket.socket]) -> None:
        """In the child: shed everything of the master's, run the worker, never return."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for sock in drop:
                sock.close()
            for handle in self.workers.values():
                handle.channel.close()
                close_quietly(handle.handoff)
                close_quietly(handle.reclaim)
            if self.dispatcher is not None:
                self.dispatcher.close_waiting()  # our copies; the master hands them on
            if self.listener not in keep:
                close_quietly(self.listener)
            self._wake_r.close()
            self._wake_w.close()
            self.selector.close()  # our copy of the epoll fd only: the master's stays intact
            code = worker.run()
        except BaseException:  # noqa: BLE001 - nothing may escape into the master's code
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _server_address(self) -> tuple[str, str]:
        assert self.listener is not None
        if self.listener.family == socket.AF_UNIX:
            return "localhost", ""
        host, port = self.listener.getsockname()[:2]
        return host, str(port)

    @property
    def _live(self) -> list[WorkerHandle]:
        """Ready workers in worker-id order: who gets connections and messages."""
        ready = [handle for handle in self.workers.values() if handle.state == "ready"]
        ready.sort(key=lambda handle: handle.worker_id)
        return ready

    def _dispatchable(self) -> list[WorkerHandle]:
        """Who gets the next connection: ready workers whose loop answered lately. A worker
        busy in a long view (or hung, until --timeout catches it) is skipped while others
        are responsive; if none is, every ready worker stays a candidate."""
        live = self._live
        fresh_after = now_ms() - RESPONSIVE_MS
        responsive = [handle for handle in live
                      if self.scoreboard.get(handle.slot, HEARTBEAT_MS) >= fresh_after]
        return responsive or live

    def _on_message(self, handle: WorkerHandle, message: wire.Message) -> None:
        # booting (start hooks) and retiring workers may send and ask too: the hub takes those
        self._message_handlers.get(type(message), self.hub.receive)(handle, message)

    def _boot_failed(self, handle: WorkerHandle, message: wire.BootFailed) -> None:
        handle.boot_error = message.reason

    def _served_max_requests(self, handle: WorkerHandle, _message: wire.Retire) -> None:
        log.info("%s served its --max-requests: replacing it", handle)
        self._renew(handle)

    def _ready(self, handle: WorkerHandle) -> None:
        handle.state = "ready"
        self.scoreboard.set(handle.slot, HEARTBEAT_MS, now_ms())  # --timeout counts from now
        self.boot_crashes = 0
        log.info("%s ready", handle)
        self._retire_older(handle)
        if self.reload_queue and self.reload_queue[0] == handle.worker_id:
            self.reload_queue.popleft()
            self._continue_reload()

    def _lost(self, target: Any) -> None:
        """A hand-off found ``target``'s channel broken: it is dying; stop choosing it."""
        handle: WorkerHandle = target
        if handle.state == "ready":
            log.warning("%s is gone; no more connections for it", handle)
            handle.state = "gone"

    # -- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._record_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeups)

    def _record_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _drain_wakeups(self, sock: socket.socket, _mask: int) -> None:
        try:
            while sock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(graceful=True)
            elif signum == signal.SIGQUIT:
                self.stop(graceful=False)
            elif signum == signal.SIGCHLD:
                self._reap_due = True
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTTIN, signal.SIGTTOU):
                count = self.target + (1 if signum == signal.SIGTTIN else -1)
                try:
                    self.scale(count)
                except ValueError as exc:
                    log.warning("%s ignored: %s", signal.Signals(signum).name, exc)

    # -- operations ---------------------------------------------------------------------------

    def stop(self, *, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        log.info("%s stop", "graceful" if graceful else "fast")
        self.stopping = True
        self.respawn_at.clear()
        self.reload_queue.clear()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        # New clients are refused from now on instead of waiting in the backlog until we exit
        # (shared: for the workers' copies too; they stop accepting when they get SIGTERM).
        if not self.inherited:  # systemd keeps its socket listening for the next start
            stop_listening(self.listener)
        grace = self.config.graceful_timeout if graceful else 0.0
        self.stop_deadline = time.monotonic() + grace + KILL_GRACE
        self._kill_all(signal.SIGTERM if graceful else signal.SIGQUIT)

    def reload(self) -> None:
        """Replace every worker, one at a time, each only after its successor is ready."""
        if self.stopping:
            return
        if self.reload_queue:
            log.info("reload requested during a reload: restarting it")
        log.info("rolling reload of %d workers", self.target)
        self.reload_queue = deque(range(self.target))
        self._continue_reload()

    def _continue_reload(self) -> None:
        while self.reload_queue:
            worker_id = self.reload_queue[0]
            if worker_id >= self.target:
                self.reload_queue.popleft()
                continue
            previous = [h.restarts for h in self.workers.values() if h.worker_id == worker_id]
            self._spawn(worker_id).restarts = max(previous, default=0)
            return
        log.info("reload complete")

    def _retire_older(self, successor: WorkerHandle) -> None:
        """The successor is serving: its predecessors with the same id finish and go."""
        for handle in list(self.workers.values()):
            if handle.worker_id == successor.worker_id and handle is not successor \
                    and handle.state == "ready" and handle.started < successor.started:
                self._retire(handle)

    def _renew(self, handle: WorkerHandle) -> None:
        """Graceful replacement: a successor first, the old worker retires when it is ready."""
        if handle.renewing or handle.state != "ready" or self.stopping:
            return
        handle.renewing = True
        self._spawn(handle.worker_id).restarts = handle.restarts

    @property
    def max_workers(self) -> int:
        """Half the scoreboard: the other half is room for successors during renewals."""
        return self.scoreboard.slots // 2

    def scale(self, count: int) -> None:
        """Run ``count`` workers; raises ValueError outside ``1 .. max_workers``."""
        if self.stopping:
            return
        if not 1 <= count <= self.max_workers:
            raise ValueError(f"scale to between 1 and {self.max_workers} workers, not {count}")
        if count == self.target:
            return
        log.info("scaling from %d to %d workers", self.target, count)
        previous, self.target = self.target, count
        self.scoreboard.worker_count = count
        for worker_id in range(previous, count):
            self._spawn(worker_id)
        for handle in list(self.workers.values()):
            if handle.worker_id >= count:
                self.respawn_at.pop(handle.worker_id, None)
                self._retire(handle)

    def _retire(self, handle: WorkerHandle) -> None:
        """Take ``handle`` out of rotation, then ask it to finish gracefully."""
        handle.state = "retiring"
        handle.kill_at = time.monotonic() + self.config.graceful_timeout + KILL_GRACE
        self._signal(handle, signal.SIGTERM)

    def _replace(self, handle: WorkerHandle) -> None:
        """A stuck worker: stop it (politely, then not) and start its successor now."""
        if handle.state == "retiring" or handle.replaced:
            return
        self._signal(handle, signal.SIGTERM)
        handle.state = "gone"
        handle.replaced = True
        handle.kill_at = time.monotonic() + KILL_GRACE
        self.hub.worker_gone(handle)
        if not self.stopping and handle.worker_id < self.target:
            self._spawn(handle.worker_id).restarts = handle.restarts + 1

    def _kill_all(self, sig: int) -> None:
        for handle in self.workers.values():
            self._signal(handle, sig)

    def _signal(self, handle: WorkerHandle, sig: int) -> None:
        try:
            os.kill(handle.pid, sig)
        except ProcessLookupError:
            pass

    def _check_workers(self, now: float) -> None:
        silent_ms = now_ms() - int(self.config.timeout * 1000)
        check_memory = self.config.max_memory and now >= self._next_memory_check
        if check_memory:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
        for handle in list(self.workers.values()):
            if check_memory:
                self._check_memory(handle)
            if handle.behind_since is not None:
                self.channels.check_backlog(handle)
            if handle.kill_at is not None and now >= handle.kill_at:
                log.warning("%s did not stop in time: SIGKILL", handle)
                self._signal(handle, signal.SIGKILL)
                handle.kill_at = None
            elif handle.state == "ready" and \
                    self.scoreboard.get(handle.slot, HEARTBEAT_MS) < silent_ms:
                log.error("%s silent for more than %gs: replacing it", handle, self.config.timeout)
                self._replace(handle)
            elif handle.state == "booting" and handle.kill_at is None \
                    and now - handle.started > self.config.timeout:
                # As gunicorn does, booting counts against --timeout: a worker stuck importing
                # the app is stopped, and its exit is handled as a crash before ready.
                log.error("%s did not boot within %gs: stopping it", handle, self.config.timeout)
                self._signal(handle, signal.SIGTERM)
                handle.kill_at = now + KILL_GRACE

    def _check_memory(self, handle: WorkerHandle) -> None:
        """--max-memory: renew a worker above the limit at two checks a second apart."""
        if handle.state != "ready" or handle.renewing:
            return
        rss = self.scoreboard.get(handle.slot, RSS_KIB)
        limit_kib = self.config.max_memory * 1024
        handle.over_memory = handle.over_memory + 1 if rss > limit_kib else 0
        if handle.over_memory >= 2:
            log.warning("%s uses %d MiB, above --max-memory %d: replacing it",
                        handle, rss // 1024, self.config.max_memory)
            self._renew(handle)

    # -- reaping ------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = self.workers.pop(pid, None)
            if handle is not None:
                self._exited(handle, status)

    def _exited(self, handle: WorkerHandle, status: int) -> None:
        self._last_words(handle)
        self.channels.unwatch(handle)
        handle.channel.close()
        if handle.reclaim is not None:
            if self.dispatcher is not None:
                self.dispatcher.take_back(handle, handle.reclaim)
            close_quietly(handle.reclaim)
            handle.reclaim = None
        close_quietly(handle.handoff)
        self.hub.worker_gone(handle)
        lived = time.monotonic() - handle.started
        how = describe_status(status)
        if self.stopping or handle.state == "retiring":
            log.info("%s exited (%s)", handle, how)
            return
        if handle.state == "booting":
            boot_error = os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_ERROR
            if boot_error:
                reason = handle.boot_error or "see the worker's traceback above"
                failure = f"worker {handle.worker_id} failed to boot: {reason}"
            else:
                failure = f"worker {handle.worker_id} died before it was ready ({how})"
            if self._live:
                self._boot_failed_while_serving(handle, failure, lived)
                return
            if boot_error:
                self._fail(EXIT_APP_LOAD_ERROR, failure)
                return
            self.boot_crashes += 1
            if self.boot_crashes >= MAX_BOOT_CRASHES:
                self._fail(EXIT_CRASH_LOOP, f"workers keep dying before they are ready (last: "
                                            f"worker {handle.worker_id}, {how})")
                return
        if not handle.replaced:
            delay = self.backoff.delay(handle.worker_id, lived)
            log.error("%s died after %.1fs (%s); respawning in %.1fs", handle, lived, how, delay)
            self.respawn_at[handle.worker_id] = time.monotonic() + delay
            self._restarts[handle.worker_id] = handle.restarts + 1

    def _boot_failed_while_serving(self, handle: WorkerHandle, failure: str, lived: float) -> None:
        """A reload, replacement or new worker whose code does not come up: the running workers
        keep serving; the reason is logged and shown by ``cluster-ctl status``."""
        self.last_error = failure
        log.error("%s; the running workers keep serving", failure)
        self.reload_queue.clear()
        for old in self.workers.values():
            old.renewing = False
        if not self._has_ready_worker(handle.worker_id) and handle.worker_id < self.target:
            delay = self.backoff.delay(handle.worker_id, lived)
            self.respawn_at[handle.worker_id] = time.monotonic() + delay

    def _last_words(self, handle: WorkerHandle) -> None:
        """A worker can send its boot failure and exit between our select and our waitpid:
        read the reason it left in the channel before the channel is closed."""
        if handle.state != "booting" or handle.boot_error is not None:
            return
        try:
            messages = wire.receive(handle.channel)
        except ipc.ChannelClosed:
            return
        for message in messages:
            if isinstance(message, wire.BootFailed):
                self._boot_failed(handle, message)

    def _has_ready_worker(self, worker_id: int) -> bool:
        return any(handle.worker_id == worker_id and handle.state == "ready"
                   for handle in self.workers.values())

    def _respawn_due(self, now: float) -> None:
        for worker_id, when in list(self.respawn_at.items()):
            if now >= when:
                del self.respawn_at[worker_id]
                if worker_id < self.target and not self.stopping:
                    self._spawn(worker_id).restarts = self._restarts.pop(worker_id, 0)

    def _fail(self, code: int, reason: str) -> None:
        self.exit = MasterExit(code, reason)
        self.stop(graceful=False)

    # -- control ------------------------------------------------------------------------------

    def _open_control(self) -> None:
        config = self.config
        assert self.listener is not None
        port = self.listener.getsockname()[1] if self.listener.family != socket.AF_UNIX else 0
        path = control_path(explicit=config.control_socket, pid_file=config.pid, uds=config.uds,
                            app_name=self.app_name, host=config.host, port=port)
        default = not (config.control_socket or config.pid or config.uds)
        self.control = ControlServer(path, lambda request: execute(request, self),
                                     private_dir=default)
        self.selector.register(self.control.sock, selectors.EVENT_READ, self._control_accept)

    def _control_accept(self, _sock: Any, _mask: int) -> None:
        assert self.control is not None
        client = self.control.accept()
        if client is not None:
            self.selector.register(client, selectors.EVENT_READ, self._control_read)

    def _control_read(self, client: Any, _mask: int) -> None:
        assert self.control is not None
        self.selector.unregister(client)
        if not self.control.read(client):
            self.selector.register(client, selectors.EVENT_READ, self._control_read)

    def publish(self, topic: str, data: Any) -> int:
        """A broadcast from outside the workers (``cluster-ctl broadcast``); how many got it."""
        return self.hub.publish(topic, wire.pack(data))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        workers = []
        for handle in sorted(self.workers.values(), key=lambda h: (h.worker_id, h.started)):
            workers.append({
                "worker_id": handle.worker_id,
                "pid": handle.pid,
                "state": handle.state,
                "uptime": round(now - handle.started, 1),
                "requests": self.scoreboard.get(handle.slot, REQUESTS),
                "in_flight": self.scoreboard.get(handle.slot, IN_FLIGHT),
                "untaken": handle.untaken,
                "rss_mib": round(self.scoreboard.get(handle.slot, RSS_KIB) / 1024, 1),
                "restarts": handle.restarts,
            })
        return {
            "master": {
                "pid": self.pid,
                "app": self.app_name,
                "address": self.address,
                "balance": self.config.balance,
                "threads": self.config.threads,
                "workers": self.target,
                "uptime": round(now - self.started, 1),
                "reloading": bool(self.reload_queue),
                "last_error": self.last_error,
            },
            "workers": workers,
        }

    # -- files --------------------------------------------------------------------------------

    def _write_pid(self) -> None:
        if self.config.pid:
            with open(self.config.pid, "w") as pid_file:
                pid_file.write(f"{self.pid}\n")

    def _close_listener(self) -> None:
        close_quietly(self.listener)
        if self.config.uds and self.listener is not None and not self.inherited:
            try:
                os.unlink(self.config.uds)
            except OSError:
                pass

    def _cleanup(self) -> None:
        for handle in self.workers.values():
            self._signal(handle, signal.SIGKILL)
        if self.dispatcher is not None:
            self.dispatcher.close_waiting()
        if self.control is not None:
            self.control.close()
        self._close_listener()
        if self.config.pid:
            try:
                with open(self.config.pid) as pid_file:
                    ours = pid_file.read().strip() == str(self.pid)
                if ours:
                    os.unlink(self.config.pid)
            except OSError:
                pass
        signal.set_wakeup_fd(-1)
        self.selector.close()
