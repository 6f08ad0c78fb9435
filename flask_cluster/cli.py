"""``flask cluster-run``: thin click wrapper that builds the config and runs the master."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import click
from flask.cli import ScriptInfo, pass_script_info

from .config import Config, click_options, option_name
from .listeners import ListenError
from .master import Master

NOT_YET = ("max_requests", "max_requests_jitter", "max_memory", "cert", "key", "reload")
"""Settings of the public contract that this version does not act on yet: refused, not ignored."""


def _check_platform() -> None:
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        raise click.ClickException(
            "flask cluster-run needs os.fork and socket.send_fds (Linux or macOS); "
            "use 'flask run' or another server on this platform")


def _validate(config: Config) -> None:
    if config.uds and config.balance == "reuseport":
        raise click.BadParameter("reuseport needs a TCP address, not --uds",
                                 param_hint=option_name("balance"))
    for name in NOT_YET:
        value = getattr(config, name)
        if value:
            raise click.BadParameter("not supported by this version yet",
                                     param_hint=option_name(name))


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")


@pass_script_info
def _cluster_run(info: ScriptInfo, /, **options: Any) -> None:
    """Run the app as a pre-fork cluster: one master, one worker per CPU."""
    _check_platform()
    config = Config(**options)
    _validate(config)
    _configure_logging()
    app_name = info.app_import_path or os.environ.get("FLASK_APP") or "app"
    try:
        code = Master(config, info.load_app, app_name).run()
    except ListenError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


cluster_run = click.Command(
    "cluster-run",
    callback=_cluster_run,
    params=list(click_options()),
    help=(_cluster_run.__doc__ or "").strip(),
    short_help="Run the app on every core as a pre-fork cluster.",
)
