"""One worker process: load the app after the fork, serve, report liveness, exit cleanly.

``Worker.__init__`` runs in the master before the fork and touches no process state;
:meth:`Worker.run` runs in the child (as gunicorn splits ``__init__`` and ``init_process``).
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
import sys
import time
import traceback
from typing import Any

import click

from .. import ipc, runtime, signing, wire
from ..contract import EXIT_BOOT_ERROR, EXIT_OK, WorkerSpec
from ..extension import extension_of
from ..http.parser import Limits
from ..http.wsgi import base_environ, parse_trusted
from ..listeners import close_quietly, stop_listening
from ..proctitle import set_title
from ..scoreboard import (
    CONNECTIONS,
    HAND_BACK,
    HEARTBEAT_MS,
    IN_FLIGHT,
    RECEIVED,
    REQUESTS,
    RSS_KIB,
    now_ms,
)
from ..tls import server_context
from ..wakeup import Wakeup
from .accepting import BacklogShare, accept_own
from .access_log import AccessLog
from .app_metrics import use_multiprocess_values
from .engine import Engine
from .even_spread import EvenSpread
from .fd_budget import FdBudget
from .free_signal import FreeSignal
from .memory import ResidentMemory
from .messenger import WorkerMessenger
from .migration import HandBack, Retirement, Unserved
from .request_metrics import RequestMetrics, request_metrics
from .spread import Spread

log = logging.getLogger("flask_cluster.worker")

HANDOFF_BATCH = 64


def run_worker(spec: WorkerSpec) -> int:
    """The :data:`~flask_cluster.contract.RunWorker` the command line hands the master."""
    return Worker(spec).run()


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.worker_id = spec.worker_id
        self.slot = spec.slot
        self.config = spec.config
        self.load_app = spec.load_app
        self.app_name = spec.app_name
        self.scoreboard = spec.scoreboard
        self.sockets = spec.sockets
        self.server_address = spec.server_address
        self.master_pid = spec.master_pid
        self.engine: Engine | None = None
        self.metrics: RequestMetrics | None = None  # --metrics
        self.channel = ipc.MessageChannel(spec.sockets.messages)
        self._signals: Wakeup | None = None
        self._retiring = False
        self._stopping = False
        self._stuck_logged = False
        self.handoff_batch = 1 if spec.config.threads == 1 else HANDOFF_BATCH

    # -- in the child -------------------------------------------------------------------------

    def run(self) -> int:
        """The child's whole life; returns its exit code."""
        set_title(f"flask-cluster worker {self.worker_id} [{self.app_name}]")
        self.memory = ResidentMemory()  # here: /proc/self is this process only after the fork
        self._install_signals()
        if self.config.metrics:
            use_multiprocess_values()  # before the app creates its metrics
        try:
            app = self.load_app()
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a bad app counts too
            return self._boot_failed(exc)
        extension = extension_of(app)
        try:
            key = signing.key_of(app.config) if self.config.broker else None
            messenger = WorkerMessenger(self.channel, self.worker_id, app, extension,
                                        signing_key=key,
                                        broker_full=lambda: self.scoreboard.broker_full)
            runtime.current = runtime.WorkerRuntime(
                self.worker_id, messenger, lambda: self.scoreboard.worker_count)
            if extension is not None:
                with app.app_context():
                    extension.run_start_hooks()
            engine = self._build_engine(app, messenger)
        except BaseException as exc:  # noqa: BLE001
            return self._boot_failed(exc)
        self.engine = engine
        messenger.attach(engine, self._master_gone)
        # What the app built at import lives as long as the worker: move it out of the
        # collector's sight so collections during requests only walk request garbage.
        gc.collect()
        gc.freeze()
        try:
            self.channel.send_now(wire.encode(wire.Ready()))
        except ipc.ChannelClosed:
            return EXIT_OK  # the master is gone already
        engine.run()
        engine.close()
        if self.metrics is not None:
            self.metrics.flush()
        if extension is not None:
            with app.app_context():
                extension.run_stop_hooks()
        return EXIT_OK

    def _build_engine(self, app: Any, messenger: WorkerMessenger) -> Engine:
        config = self.config
        words = self.scoreboard.words
        base = self.scoreboard.base(self.slot)
        requests_index, in_flight_index = base + REQUESTS, base + IN_FLIGHT
        self.metrics = request_metrics(self.scoreboard, self.slot) if config.metrics else None
        max_requests = 0
        if config.max_requests:
            max_requests = config.max_requests + random.randint(0, config.max_requests_jitter)

        connections_index = base + CONNECTIONS
        free_signal = FreeSignal(words, in_flight_index, messenger.send)
        spread: Spread | None = None  # made with the engine, below
        share: BacklogShare | None = None

        def on_connection(delta: int) -> None:
            words[connections_index] += delta

        def on_request(delta: int) -> None:
            words[in_flight_index] += delta
            if delta > 0:
                words[requests_index] += 1
                if spread is not None:
                    spread.request_started()
                return
            free_signal.request_ended()
            if share is not None:
                share.look()
            if spread is not None:
                spread.request_ended()
            if max_requests and words[requests_index] >= max_requests:
                self._retire()

        server_name, server_port = self.server_address
        tls = server_context(config.cert, config.key) if config.cert else None
        limits = Limits(max_url=config.limit_request_line,
                        max_header_bytes=config.limit_request_header_bytes,
                        max_field=config.limit_request_field_size,
                        max_headers=config.limit_request_fields, max_body=config.max_body)
        engine = Engine(
            app, threads=config.threads, keep_alive=config.keep_alive, limits=limits,
            base_environ=base_environ(server_name, server_port,
                                      scheme="https" if tls else "http",
                                      multithread=config.threads > 1),
            access_log=AccessLog(config.access_log_format, config.log_format)
            if config.access_log else None,
            on_request=on_request,
            on_connection=on_connection,
            tls=tls,
            header_timeout=config.header_timeout,
            max_connections=config.max_connections,
            trusted_proxies=parse_trusted(config.forwarded_allow_ips),
            record=self.metrics.record if self.metrics is not None else None,
        )
        engine.tick_callbacks.append(self._heartbeat)
        engine.on_stop_asked = lambda: self._stop(self.config.graceful_timeout)
        sockets = self.sockets
        if sockets.handoff is not None:
            engine.add_reader(sockets.handoff, self._take_connections)
            self.unserved = Unserved(sockets.handoff,
                                     lambda: self.scoreboard.get(self.slot, HEARTBEAT_MS))
            if config.threads == 1:  # the app on the loop: a request can hold it
                if sockets.listener is None and sockets.reuseport is None:
                    # The master passes every connection. Where we accept ourselves the
                    # channel carries only moved kept-alive ones: no thread for them (a
                    # killed worker with a second thread closes its own listener later).
                    self.unserved.watch()
                spread = Spread(engine, HandBack(engine, sockets.handoff), self.scoreboard,
                                self.slot)
                engine.tick_callbacks.append(spread.rebalance)
        share = accept_own(engine, sockets, self.scoreboard, self.slot)
        if sockets.listener is not None and spread is not None:
            engine.divert = EvenSpread(spread.hand_back.channel, self.scoreboard, self.slot).divert
        assert self._signals is not None
        engine.add_reader(self._signals.reader, self._on_signal)
        # Last: the cap leaves out what is open by now.
        self.fd_budget = FdBudget(engine, config.threads, config.max_connections)
        if sockets.listener is not None:  # accepting itself: it sheds as it accepts
            engine.on_connection = self.fd_budget.shedding(on_connection)
        return engine

    def _take_connections(self) -> bool:
        """Take up to a batch of passed connections; True when some were taken."""
        handoff, budget = self.sockets.handoff, self.fd_budget
        assert self.engine is not None and handoff is not None
        # No more packets than there is room for (at the descriptor limit the kernel would drop
        # what does not fit, resetting clients); near the cap, one once there is room for it.
        # With the app on the loop, one packet a wake-up: what waits in the channel is taken
        # back and served elsewhere if we die (kill -9, the OOM killer), what we took is lost.
        packets = min(self.handoff_batch, budget.room() // ipc.PACKET_FDS)
        if not packets:
            packets = 1
            count = ipc.peek_passed(handoff)
            if not budget.make_room(count) and count <= budget.cap:
                budget.hold(handoff, self._take_connections)
                return False
        try:
            connections = ipc.receive_connections(handoff, packets, self.sockets.family,
                                                  self._dropped)
        except ipc.ChannelClosed:
            self.engine.remove_reader(handoff)
            self._master_gone()
            return False
        self._count_received(len(connections))
        unserved = self.unserved.queue
        unserved.extend(connections)
        while True:
            try:
                sock, peer = unserved.popleft()  # or the watchdog took it (migration.Unserved)
            except IndexError:
                break
            self.engine.add_connection(sock, peer)
        return bool(connections)

    def _count_received(self, count: int) -> None:
        """Taken off the hand-off channel: the master no longer counts them as untaken."""
        self.scoreboard.words[self.scoreboard.base(self.slot) + RECEIVED] += count

    def _dropped(self, count: int) -> None:
        """Passed to us, dropped by the kernel at our descriptor limit: gone from the channel
        all the same (the master must not count them as untaken forever)."""
        self._count_received(count)
        self.fd_budget.dropped(count)

    def _heartbeat(self, now: float) -> None:
        assert self.engine is not None
        started = self.engine.oldest_busy()
        if started is not None and now - started > self.config.timeout:
            # A request thread is stuck: stop vouching for this process, so the master
            # replaces it as it would a worker whose loop is stuck.
            if not self._stuck_logged:
                log.error("worker %s: a request has been running for %.0fs without output",
                          self.worker_id, now - started)
                self._stuck_logged = True
            # Vouch for no more than the stuck request's start, so the master counts --timeout
            # from there (not another whole --timeout from now).
            self.scoreboard.set(self.slot, HEARTBEAT_MS,
                                min(self.scoreboard.get(self.slot, HEARTBEAT_MS),
                                    int(started * 1000)))
        else:
            self.scoreboard.set(self.slot, HEARTBEAT_MS, now_ms())
        self.scoreboard.set(self.slot, RSS_KIB, self.memory.kib())
        if self.metrics is not None:
            self.metrics.flush()
        if os.getppid() != self.master_pid:
            self._master_gone()

    def _retire(self) -> None:
        """Served --max-requests: ask the master for a successor; it stops us once that is ready."""
        if self._retiring:
            return
        self._retiring = True
        try:
            self.channel.send_now(wire.encode(wire.Retire()))
        except ipc.ChannelClosed:
            self._master_gone()

    def _master_gone(self) -> None:
        """No master: finish what is in progress and exit, leaving no orphan behind."""
        self._stop(self.config.graceful_timeout)

    def _stop(self, graceful_timeout: float) -> None:
        engine = self.engine
        if engine is None or engine.stopping or self._stopping:
            return
        # Once: draining the hand-off channel below can find the master gone, which stops us.
        self._stopping = True
        sockets = self.sockets
        retirement = self._retirement()
        if retirement is not None:
            retirement.begin()  # first: stopping closes the idle connections
        # First: what the drain below hands the engine is answered as a stopping worker does.
        engine.begin_stop(graceful_timeout)
        if sockets.handoff is not None:
            if retirement is not None:
                self._pass_on_untaken(retirement.hand_back)
            # Connections the master passed before it took us out of rotation are still ours
            # (what is left at our exit it takes back). Bounded: sent a TERM directly, we are
            # still in its rotation, and it goes on passing.
            for _ in range(HANDOFF_BATCH):
                if not self._take_connections():
                    break
            self.fd_budget.forget_held()
            engine.remove_reader(sockets.handoff)
        for listener in (sockets.listener, sockets.backlog):
            if listener is not None:
                engine.remove_listener(listener)
                close_quietly(listener)

    def _retirement(self) -> Retirement | None:
        """Retired on purpose (the master set our HAND_BACK word before its SIGTERM): our
        kept-alive connections go to the workers that stay instead of being closed."""
        assert self.engine is not None
        handoff = self.sockets.handoff
        if handoff is None or not self.scoreboard.get(self.slot, HAND_BACK):
            return None
        return Retirement(HandBack(self.engine, handoff))

    def _pass_on_untaken(self, hand_back: HandBack) -> None:
        """Connections the master passed before it took us out of rotation, unread: back to it
        as they came, so a worker that stays serves them. What the channel does not take now
        is left there for :meth:`_take_connections`."""
        handoff = self.sockets.handoff
        assert self.engine is not None and handoff is not None
        while True:
            try:
                passed = ipc.receive_passed(handoff, HANDOFF_BATCH, self._dropped)
            except ipc.ChannelClosed:
                return
            if not passed:
                return
            self._count_received(len(passed))
            left = hand_back.pass_on(passed)
            for sock, peer in ipc.wrap_passed(left, self.sockets.family):
                self.engine.add_connection(sock, peer)
            if left:
                return

    # -- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        """TERM: graceful exit; QUIT: exit now. INT is the master's to act on (a Ctrl-C
        reaches the whole process group); HUP, TTIN and TTOU are the master's too."""
        self._signals = Wakeup()
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._record_signal)
        signal.signal(signal.SIGQUIT, self._record_signal)
        self._signals.for_signals()

    def _record_signal(self, signum: int, _frame: Any) -> None:
        if self.engine is None:  # still booting: nothing in flight, just go
            os._exit(EXIT_OK)
        if signum == signal.SIGTERM and not self.engine.stop_asked_at:
            self.engine.stop_asked_at = time.monotonic()
        if self.sockets.reuseport is not None:
            # Our own SO_REUSEPORT socket: stop taking connections now, not when the loop gets
            # here (with --threads 1 a slow view holds the loop, and clients would queue).
            stop_listening(self.sockets.listener)

    def _on_signal(self) -> None:
        assert self._signals is not None
        for signum in self._signals.drain():
            if signum == signal.SIGQUIT:
                os._exit(EXIT_OK)
            if signum == signal.SIGTERM:
                self._stop(self.config.graceful_timeout)

    def _boot_failed(self, exc: BaseException) -> int:
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self.channel.send_now(wire.encode(wire.BootFailed(one_line_reason(exc), details)),
                                  timeout=2.0)
        except ipc.ChannelClosed:
            print(details, end="", file=sys.stderr, flush=True)  # no master to show it
        return EXIT_BOOT_ERROR


def one_line_reason(exc: BaseException) -> str:
    """What failed, in one line for the master's exit message (the traceback is logged)."""
    name = type(exc).__qualname__
    if isinstance(exc, click.ClickException):  # Flask's NoAppException: its message is the reason
        return exc.format_message()[:500]
    if isinstance(exc, SyntaxError):
        return f"{name}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = " ".join(str(exc).split())
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, SyntaxError) and "SyntaxError" not in text:
        text += f" ({one_line_reason(cause)})"
    return f"{name}: {text}"[:500]
