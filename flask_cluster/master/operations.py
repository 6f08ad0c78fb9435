"""What a running cluster can be asked from outside its workers: by ``cluster-ctl`` over the
control socket (:mod:`.control`'s ``Controlled``) and by signals (:mod:`.signals`). Each request
becomes roster events, which the master performs, or a message to the workers; the status is
read off the roster and the scoreboard.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from .. import wire
from ..config import Config
from ..scoreboard import Scoreboard
from .actions import Action
from .channels import WorkerChannels
from .endpoints import Endpoints
from .hub import Hub
from .recent import RecentWindow
from .roster import Roster
from .status import cluster_status
from .worker_handle import WorkerHandle

if TYPE_CHECKING:
    from .redis_relay import RedisRelay


class Supervisor(Protocol):
    """The master, as its operations see it."""

    config: Config
    app_name: str
    pid: int
    started: float
    roster: Roster
    scoreboard: Scoreboard
    workers: dict[int, WorkerHandle]
    recent: RecentWindow
    hub: Hub
    channels: WorkerChannels
    broker: RedisRelay | None
    endpoints: Endpoints | None

    @property
    def live(self) -> list[WorkerHandle]: ...

    def perform(self, actions: list[Action]) -> None: ...


class Operations:
    def __init__(self, master: Supervisor) -> None:
        self.master = master

    @property
    def address(self) -> str:
        endpoints = self.master.endpoints
        return endpoints.address if endpoints is not None else ""

    def stop(self, *, graceful: bool) -> None:
        master = self.master
        master.perform(master.roster.stop(graceful=graceful, now=time.monotonic()))

    def reload(self) -> None:
        self.master.perform(self.master.roster.reload(time.monotonic()))

    def scale(self, count: int) -> None:
        """Run ``count`` workers; raises ValueError outside ``1 .. max_workers``."""
        master = self.master
        master.perform(master.roster.scale(count, time.monotonic()))
        master.scoreboard.worker_count = master.roster.target

    def publish(self, topic: str, data: Any) -> int:
        """A broadcast from outside the workers (``cluster-ctl broadcast``); how many got it."""
        master = self.master
        if master.broker is not None:
            # The workers check every broadcast's signature and the master has no key to sign
            # with: a worker signs it and broadcasts it to every host.
            live = master.live
            if not live:
                raise ValueError("no worker is serving to sign the broadcast: try again")
            master.channels.send(live[0], wire.encode(wire.Publish(topic, wire.pack(data))))
            return len(live)
        return master.hub.publish(topic, wire.pack(data))

    def status(self) -> dict[str, Any]:
        master, now = self.master, time.monotonic()
        own = {"pid": master.pid, "app": master.app_name, "address": self.address,
               "balance": master.config.balance, "threads": master.config.threads,
               "uptime": round(now - master.started, 1), "holding": master.scoreboard.holding,
               "workers_accept": master.scoreboard.workers_accept}
        if master.broker is not None:
            own["broker"] = master.broker.status()
        return cluster_status(own, master.roster, master.workers, master.scoreboard,
                              master.recent, now)
