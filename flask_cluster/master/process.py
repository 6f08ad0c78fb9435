"""The master: binds once, forks workers, hands them connections, supervises them.

The supervision policy lives in :mod:`.roster`; this module is the shell around it that does the
I/O: it turns what it sees (signals, messages, exits, heartbeats) into roster events and performs
the actions that come back. Signal handlers only record the signal; the loop acts on it
(gunicorn's arbiter does the same). The master never imports the app: workers load it after the
fork, so a reload picks up new code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from ..config import Config
from ..contract import RunWorker
from ..listeners import close_quietly, stop_listening
from ..proctitle import set_title
from ..scoreboard import HAND_BACK, HEARTBEAT_MS, Scoreboard, now_ms
from ..tls import server_context
from .actions import Abandon, Action, Exit, Kill, Log, Signal, Spawn, StopAccepting
from .channels import WorkerChannels
from .cpus import usable_cpus
from .dispatch import Dispatcher
from .endpoints import Endpoints, open_endpoints
from .health import Health
from .hub import Deliver, Hub, LocalRelay
from .operations import Operations
from .recent import RecentWindow
from .roster import Roster
from .signals import SignalQueue
from .source_watch import SourceWatcher
from .spawn import Spawner, decode_status, reaped
from .worker_handle import WorkerHandle

if TYPE_CHECKING:
    from .metrics import ClusterMetrics
    from .redis_relay import RedisRelay

log = logging.getLogger("flask_cluster.master")

EXIT_CLEAN = 0
HOUSEKEEPING = 0.1  # seconds between checks of timers, heartbeats, memory and deadlines


class Master:
    def __init__(self, config: Config, load_app: Callable[[], Any], app_name: str,
                 run_worker: RunWorker) -> None:
        self.config = config
        self.run_worker = run_worker
        self.load_app = load_app
        self.app_name = app_name
        self.workers: dict[int, WorkerHandle] = {}  # by pid: the I/O side of each roster member
        target = config.workers or usable_cpus()
        self.scoreboard = Scoreboard(slots=max(64, target * 4))
        # Half the scoreboard at most: the other half is room for successors during renewals.
        self.roster = Roster(target, timeout=config.timeout,
                             graceful_timeout=config.graceful_timeout,
                             max_memory_mib=config.max_memory,
                             max_workers=self.scoreboard.slots // 2)
        self.health = Health(config, self.scoreboard, self.roster)
        self.recent = RecentWindow(self.scoreboard)  # cluster-ctl top's last 10 seconds
        self.metrics: ClusterMetrics | None = None  # --metrics
        self.selector = selectors.DefaultSelector()
        self.signals = SignalQueue()
        self._next_housekeeping = 0.0
        self._reap_due = False  # SIGCHLD came: reap on this pass
        self.dispatcher: Dispatcher | None = None  # made in run(), with the listener
        self.spawner: Spawner | None = None
        self.channels = WorkerChannels(  # a worker far behind on its messages is hung
            self.selector, self._on_message,
            lambda handle: self.perform(self.roster.hung(handle.pid, time.monotonic())))
        self.broker: RedisRelay | None = None
        self.hub = Hub(self.channels.send, lambda: self.live,
                       relay=self._open_broker if config.broker else LocalRelay)
        self.operations = Operations(self)  # what cluster-ctl and signals ask
        operations = self.operations
        self._on_signal: dict[str, Callable[[], None]] = {
            "graceful stop": lambda: operations.stop(graceful=True),
            "fast stop": lambda: operations.stop(graceful=False),
            "reap": self._reap_soon, "reload": operations.reload,
            "one more": lambda: operations.scale(self.roster.target + 1),
            "one fewer": lambda: operations.scale(self.roster.target - 1),
        }
        self._message_handlers: dict[type[wire.Message], Callable[[WorkerHandle, Any], None]] = {
            wire.Ready: self._ready,
            wire.BootFailed: self._boot_failed,
            wire.Retire: self._served_max_requests,
            wire.Free: self._worker_free,
        }
        self.exit: Exit | None = None  # why the master gives up, if it does
        self._announced = False  # the "serving" line is printed when the first worker is ready
        self._failure_shown = False  # a boot failure's traceback was printed
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.endpoints: Endpoints | None = None  # the listener, control socket and pid file
        self.watcher = SourceWatcher(os.getcwd()) if config.reload else None
        # Checked here so a bad certificate fails at start with a clear message; each worker
        # loads its own after the fork, so a rolling reload picks up renewed certificates.
        self.tls = server_context(config.cert, config.key) if config.cert else None

    # -- life ---------------------------------------------------------------------------------

    def run(self) -> int:
        set_title(f"flask-cluster master [{self.app_name}]")
        config = self.config
        self.endpoints = open_endpoints(config, self.app_name, self.operations, self.selector,
                                        tls=self.tls is not None)
        listener = self.endpoints.listener
        if config.metrics:
            from .metrics import open_metrics  # prometheus_client is an extra
            self.metrics = open_metrics(self, self.endpoints)
        self.signals.install(self.selector)
        self.spawner = Spawner(config, self.load_app, self.app_name, self.scoreboard,
                               listener, self.pid, self.run_worker)
        self.dispatcher = Dispatcher(listener, self.selector, config.balance,
                                     lambda: self.health.responsive_first(self.live), self._lost,
                                     serving_blocks=config.threads == 1,
                                     queue_depth=config.queue_depth,
                                     on_holding=self._holding,
                                     accepts=config.balance in ("round-robin", "least-busy"),
                                     on_workers_accept=self._workers_accept)
        self.dispatcher.start()
        self.scoreboard.worker_count = self.roster.target
        self.perform(self.roster.start(time.monotonic()))
        try:
            while not self.roster.finished:
                self._loop_once()
        finally:
            self._cleanup()
        if self.exit is not None and self.exit.code != EXIT_CLEAN:
            log.error("%s", self.exit.reason)
            return self.exit.code
        return EXIT_CLEAN

    def _open_broker(self, deliver: Deliver) -> RedisRelay:
        from .redis_relay import open_relay  # redis-py is an extra: imported only when asked for

        def on_full(full: bool) -> None:
            self.scoreboard.broker_full = full

        self.broker = open_relay(deliver, self.config, self.app_name, self.selector, on_full,
                                 lambda: [handle.worker_id for handle in self.live])
        return self.broker

    def _loop_once(self) -> None:
        timeout = self._next_timeout()
        for key, mask in self.selector.select(timeout):
            callback = key.data
            callback(key.fileobj, mask)
        if self.signals.pending:
            self.signals.act(self._on_signal, lambda: self.roster.stopping,
                             self.config.graceful_timeout)
        now = time.monotonic()
        if self._reap_due or now >= self._next_housekeeping:
            self._reap_due = False
            self._reap()
        if self.hub.pending:
            self.hub.expire(now)
        if self.dispatcher is not None:
            self.dispatcher.tick()
        if now >= self._next_housekeeping:
            # Not after every wake-up: under a stream of connections the master wakes
            # thousands of times a second, and none of this needs that.
            self._next_housekeeping = now + HOUSEKEEPING
            self._housekeeping(now)
        if self.channels.unflushed:
            self.channels.flush_all()

    def _housekeeping(self, now: float) -> None:
        for handle in list(self.workers.values()):
            if handle.behind_since is not None:
                self.channels.check_backlog(handle)
        self.perform(self.health.check(list(self.workers.values()), now))
        if self.dispatcher is not None:
            for handle in self.health.unresponsive(self.live):
                if handle.untaken and handle.reclaim is not None:
                    self.dispatcher.take_back(handle, handle.reclaim, alive=True)
        self.perform(self.roster.tick(now))
        if self.broker is not None:
            self.broker.tick(now)
        self.recent.sample(now, ((handle.pid, handle.slot) for handle in self.workers.values()))
        if self.watcher is not None and not self.roster.stopping and self.watcher.changed():
            log.info("source changed: reloading")
            self.operations.reload()

    def _next_timeout(self) -> float:
        deadlines = [self._next_housekeeping]
        for deadline in (self.hub.next_deadline(),
                         self.dispatcher.next_deadline() if self.dispatcher else None):
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - time.monotonic())

    # -- performing the roster's actions --------------------------------------------------------

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self._spawn(action.worker_id)
            elif isinstance(action, Signal):
                if action.hand_back:
                    self._ask_hand_back(action.pid)
                self._signal(action.pid, action.sig)
            elif isinstance(action, Kill):
                self._signal(action.pid, signal.SIGKILL)
            elif isinstance(action, Log):
                log.log(action.level, "%s", action.message)
            elif isinstance(action, Abandon) and action.pid in self.workers:
                self.hub.worker_gone(self.workers[action.pid])
            elif isinstance(action, StopAccepting):
                if self.dispatcher is not None:
                    self.dispatcher.stop()
                # New clients are refused from now on instead of waiting in the backlog until
                # we exit (shared: for the workers' copies too; they stop accepting on SIGTERM).
                assert self.endpoints is not None
                if not self.endpoints.inherited:  # systemd keeps it listening for the next start
                    stop_listening(self.endpoints.listener)
            elif isinstance(action, Exit):
                self.exit = action

    def _ask_hand_back(self, pid: int) -> None:
        """Before its SIGTERM: the worker hands its kept-alive connections back (to
        ``Dispatcher.came_back``) rather than close them. Only where the master hands off."""
        handle = self.workers.get(pid)
        if handle is not None and self.dispatcher is not None:
            self.scoreboard.set(handle.slot, HAND_BACK, 1)

    def _signal(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    # -- workers ------------------------------------------------------------------------------

    def _spawn(self, worker_id: int) -> None:
        assert self.spawner is not None
        # The selector's close in the child drops its copy of the epoll fd only.
        shed: list[Callable[[], object]] = [self.selector.close]
        if self.dispatcher is not None:
            shed.append(self.dispatcher.close_waiting)  # our copies; the master hands them on
        close: list[socket.socket | None] = [self.signals.wakeup.reader, self.signals.wakeup.writer]
        if self.broker is not None:
            close += self.broker.sockets()
        handle = self.spawner.spawn(worker_id, self.workers.values(), close, shed)
        self.workers[handle.pid] = handle
        self.roster.add(worker_id, handle.pid, time.monotonic())
        self.channels.watch(handle)
        if self.dispatcher is not None:
            self.dispatcher.watch(handle)

    @property
    def live(self) -> list[WorkerHandle]:
        """Workers in rotation, in worker-id order: who gets connections and messages (not
        one being reaped: it is out of ``workers`` before the roster hears of its exit)."""
        return [self.workers[m.pid] for m in self.roster.serving() if m.pid in self.workers]

    def _on_message(self, handle: WorkerHandle, message: wire.Message) -> None:
        # booting (start hooks) and retiring workers may send and ask too: the hub takes those
        self._message_handlers.get(type(message), self.hub.receive)(handle, message)

    def _ready(self, handle: WorkerHandle, _message: wire.Ready) -> None:
        self.scoreboard.set(handle.slot, HEARTBEAT_MS, now_ms())  # --timeout counts from now
        self.perform(self.roster.ready(handle.pid, time.monotonic()))
        if not self._announced:  # only now: an app that cannot load never looks served
            self._announced = True
            config, target = self.config, self.roster.target
            log.info("serving %s on %s with %d worker%s (balance %s, threads %d), master pid %d",
                     self.app_name, self.operations.address, target, "s" if target != 1 else "",
                     config.balance, config.threads, self.pid)

    def _boot_failed(self, handle: WorkerHandle, message: wire.BootFailed) -> None:
        if message.traceback and not self._failure_shown:  # once, whatever the worker count
            self._failure_shown = True
            log.error("%s failed to boot:\n%s", handle, message.traceback.rstrip())
        self.roster.boot_failed(handle.pid, message.reason)

    def _served_max_requests(self, handle: WorkerHandle, _message: wire.Retire) -> None:
        self.perform(self.roster.recycle(handle.pid, "served its --max-requests", time.monotonic(),
                                          reason="max-requests"))

    def _workers_accept(self, on: bool) -> None:
        self.scoreboard.workers_accept = on

    def _holding(self, count: int) -> None:
        self.scoreboard.holding = count

    def _worker_free(self, handle: WorkerHandle, _message: wire.Free) -> None:
        """A worker has room: connections held for one go out now."""
        if self.dispatcher is not None:
            self.dispatcher.worker_free(handle)

    def _lost(self, target: Any) -> None:
        """A hand-off found ``target``'s channel broken: it is dying; stop choosing it."""
        self.perform(self.roster.lost(target.pid))

    # -- reaping ------------------------------------------------------------------------------

    def _reap(self) -> None:
        for pid, status in reaped():
            handle = self.workers.pop(pid, None)
            if handle is not None:
                self._exited(handle, status)

    def _exited(self, handle: WorkerHandle, status: int) -> None:
        if self.metrics is not None:  # first: its slot may be reused by what follows
            self.metrics.worker_exited(handle)
        # A worker can send its boot failure and exit between our select and our waitpid.
        for message in self.channels.last_words(handle):
            if isinstance(message, wire.BootFailed):
                self._boot_failed(handle, message)
        self.channels.unwatch(handle)
        handle.channel.close()
        if self.dispatcher is not None:
            self.dispatcher.unwatch(handle)  # what it handed back just before it exited
        if handle.reclaim is not None:
            if self.dispatcher is not None:
                self.dispatcher.take_back(handle, handle.reclaim)
            close_quietly(handle.reclaim)
            handle.reclaim = None
        close_quietly(handle.handoff)
        self.hub.worker_gone(handle)
        self.perform(self.roster.exited(handle.pid, decode_status(status), time.monotonic()))

    def _reap_soon(self) -> None:
        self._reap_due = True

    # -- the end ---------------------------------------------------------------

    def _cleanup(self) -> None:
        for pid in self.workers:
            self._signal(pid, signal.SIGKILL)
        if self.dispatcher is not None:
            self.dispatcher.close_waiting()
        if self.endpoints is not None:
            self.endpoints.close(self.config)
        self.signals.close()
        if self.broker is not None:
            self.broker.close()
        if self.metrics is not None:
            self.metrics.close()
        self.selector.close()
