"""``--metrics``: what the master does for it, in one place.

At start: the app metrics directory (before the first fork) and the ``/metrics`` responder on
the master's selector. When a worker exits: its request counters folded into the totals and its
live gauges marked dead. At each scrape: the server's families from a snapshot of the master's
state, and the app's metrics merged from the workers' files.
"""

from __future__ import annotations

import logging
import os
import selectors
from collections import Counter
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ..config import Config, split_address
from ..scoreboard import IN_FLIGHT, RSS_KIB, Scoreboard
from .app_metrics import AppMetricsDir
from .dispatch import Dispatcher
from .endpoints import Endpoints
from .hub import Hub
from .metrics_server import MetricsError, MetricsServer
from .registry import RegistryError
from .roster import Roster
from .server_metrics import ServerState, families
from .totals import Totals
from .worker_handle import WorkerHandle

log = logging.getLogger("flask_cluster.master")


class Observed(Protocol):
    """What ``--metrics`` reads of the master."""

    config: Config
    app_name: str
    workers: dict[int, WorkerHandle]
    roster: Roster
    scoreboard: Scoreboard
    dispatcher: Dispatcher | None  # round-robin and least-busy: the master accepts
    hub: Hub

    @property
    def selector(self) -> selectors.BaseSelector: ...


def open_metrics(master: Observed, endpoints: Endpoints) -> ClusterMetrics:
    """Everything ``--metrics`` needs, answering scrapes, before the first fork (the workers
    inherit the app metrics directory). If it fails, it closes what the master opened before
    (``endpoints``) as well, so a start that fails leaves nothing behind."""
    assert master.config.metrics is not None
    metrics: ClusterMetrics | None = None
    try:
        metrics = ClusterMetrics(master.config.metrics, master.app_name, os.getpid(), master)
        log.info("metrics on %s", metrics.serve(master.selector))
    except BaseException as exc:
        if metrics is not None:
            metrics.close()
        endpoints.close(master.config)
        if isinstance(exc, (OSError, RegistryError)):
            raise MetricsError(f"cannot create the app metrics directory: {exc}") from None
        raise
    return metrics


class ClusterMetrics:
    def __init__(self, address: str, app_name: str, pid: int, master: Observed) -> None:
        """Call before the first fork: the workers inherit the app metrics directory."""
        self.master = master
        self.app_dir = AppMetricsDir(app_name, pid)
        self.totals = Totals(master.scoreboard)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, str(self.app_dir.path))  # type: ignore[no-untyped-call]
        self.registry.register(_ServerCollector(self))
        self.address = address
        self.server: MetricsServer | None = None

    def serve(self, selector: selectors.BaseSelector) -> str:
        """Start answering scrapes; returns the URL (the port is known now if 0 was asked)."""
        host, port = split_address(self.address)
        self.server = MetricsServer(host, port, selector, lambda: generate_latest(self.registry))
        return self.server.address

    def worker_exited(self, handle: WorkerHandle) -> None:
        """After the worker was reaped, before its slot can go to another."""
        self.totals.fold(handle.slot)
        self.app_dir.worker_exited(handle.pid)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.app_dir.close()

    def state(self) -> ServerState:
        master = self.master
        handles = list(master.workers.values())
        board = master.scoreboard
        rss: Counter[int] = Counter()
        for handle in handles:
            rss[handle.worker_id] += board.get(handle.slot, RSS_KIB)
        return ServerState(
            counters=self.totals.current(handle.slot for handle in handles),
            in_flight=sum(board.get(handle.slot, IN_FLIGHT) for handle in handles),
            untaken=sum(handle.untaken for handle in handles),
            held=board.holding,  # the count the workers read, not the master's own list
            workers_accepting=board.workers_accept,
            connections=master.dispatcher.counts if master.dispatcher is not None else {},
            workers=Counter(member.state.label for member in master.roster.members.values()),
            restarts=master.roster.restart_reasons,
            rss_kib=rss,
            messages=master.hub.counts,
        )


class _ServerCollector(Collector):
    def __init__(self, metrics: ClusterMetrics) -> None:
        self.metrics = metrics

    def collect(self):  # type: ignore[no-untyped-def]  # as prometheus_client declares it
        return families(self.metrics.state())

    def describe(self):  # type: ignore[no-untyped-def]
        return []  # so registering does not take a snapshot before the master runs
