"""What the master opens before its first fork and closes last: the listening socket, the
control socket and the pid file. Opened in that order, each undone if a later one fails, so a
start that fails leaves nothing behind."""

from __future__ import annotations

import os
import selectors
import socket
from dataclasses import dataclass

from ..config import Config
from ..listeners import close_listener, describe, open_listener
from .control import ControlError, Controlled, ControlServer, open_control
from .pidfile import PidFileError, remove_pid, write_pid


@dataclass
class Endpoints:
    listener: socket.socket
    inherited: bool  # from systemd, which keeps it listening for the next start
    address: str  # as the startup line shows it
    control: ControlServer

    def close(self, config: Config) -> None:
        self.control.close()
        close_listener(self.listener, config.uds, self.inherited)
        remove_pid(config.pid, os.getpid())


def open_endpoints(config: Config, app_name: str, master: Controlled,
                   selector: selectors.BaseSelector, *, tls: bool) -> Endpoints:
    listener, inherited = open_listener(config.host, config.port, config.uds,
                                        reuseport=config.balance == "reuseport")
    try:
        control = open_control(config, listener, app_name, master)
    except ControlError:
        close_listener(listener, config.uds, inherited)
        raise
    try:
        write_pid(config.pid, os.getpid())
    except PidFileError:
        control.close()
        close_listener(listener, config.uds, inherited)
        raise
    control.watch(selector)
    return Endpoints(listener, inherited, describe(listener, tls=tls), control)
