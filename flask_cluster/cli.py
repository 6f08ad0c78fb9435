"""``flask cluster-run``: thin click wrapper that builds the config and runs the master."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import sys
from typing import Any

import click
from click.core import ParameterSource
from flask.cli import ScriptInfo, pass_script_info

from .config import Config, Port, click_options, option_name
from .listeners import ListenError
from .logs import configure as configure_logging
from .master.control import ControlError, control_path, request
from .master.metrics_server import MetricsError
from .master.pidfile import PidFileError
from .master.process import Master
from .master.registry import running
from .tls import TLSConfigError
from .top import frame, live
from .worker.access_log import AccessLogFormatError, check_format
from .worker.process import run_worker


def _check_platform() -> None:
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        raise click.ClickException(
            "flask cluster-run needs os.fork and socket.send_fds (Linux or macOS); "
            "use 'flask run' or another server on this platform")


def _validate(config: Config) -> None:
    if config.uds and config.balance == "reuseport":
        raise click.BadParameter("reuseport needs a TCP address, not --uds",
                                 param_hint=option_name("balance"))
    if config.key and not config.cert:
        raise click.BadParameter("--key needs --cert", param_hint=option_name("key"))
    if config.broker is not None:
        if not config.broker.startswith(("redis://", "rediss://")):
            raise click.BadParameter(f"{config.broker!r} is not a redis:// or rediss:// URL",
                                     param_hint=option_name("broker"))
        if importlib.util.find_spec("redis") is None:
            raise click.BadParameter("needs redis-py: pip install 'flask-cluster[redis]'",
                                     param_hint=option_name("broker"))
    if config.metrics is not None and importlib.util.find_spec("prometheus_client") is None:
        raise click.BadParameter("needs prometheus-client: pip install 'flask-cluster[metrics]'",
                                 param_hint=option_name("metrics"))
    try:
        check_format(config.access_log_format)
    except AccessLogFormatError as exc:
        raise click.BadParameter(str(exc), param_hint=option_name("access_log_format")) from exc


@pass_script_info
def _cluster_run(info: ScriptInfo, /, **options: Any) -> None:
    """Run the app as a pre-fork cluster: one master, one worker per CPU."""
    _check_platform()
    if options["reload"] and click.get_current_context().get_parameter_source(
            "access_log") is ParameterSource.DEFAULT:
        options["access_log"] = True  # development: one line per request, as flask run
    config = Config(**options)
    _validate(config)
    configure_logging(config.log_level, config.log_format)
    app_name = info.app_import_path or os.environ.get("FLASK_APP") or "app"
    try:
        code = Master(config, info.load_app, app_name, run_worker).run()
    except (ListenError, TLSConfigError, ControlError, PidFileError, MetricsError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


cluster_run = click.Command(
    "cluster-run",
    callback=_cluster_run,
    params=list(click_options()),
    help=(_cluster_run.__doc__ or "").strip(),
    short_help="Run the app on every core as a pre-fork cluster.",
)


# -- cluster-ctl ----------------------------------------------------------------------------------

STATUS_COLUMNS = ("worker_id", "pid", "state", "uptime", "requests", "in_flight", "untaken",
                  "rss_mib", "restarts")


@click.group("cluster-ctl")
@click.option("--control-socket", envvar="FLASK_CLUSTER_RUN_CONTROL_SOCKET",
              type=click.Path(dir_okay=False), help="The master's control socket.")
@click.option("--pid", "pid_file", envvar="FLASK_CLUSTER_RUN_PID", type=click.Path(dir_okay=False),
              help="The --pid file given to cluster-run.")
@click.option("--uds", envvar="FLASK_CLUSTER_RUN_UDS", help="The --uds given to cluster-run.")
@click.option("--host", envvar="FLASK_CLUSTER_RUN_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="FLASK_CLUSTER_RUN_PORT", default=5000, type=Port(), show_default=True)
@pass_script_info
@click.pass_context
def cluster_ctl(ctx: click.Context, info: ScriptInfo, /, control_socket: str | None,
                pid_file: str | None, uds: str | None, host: str, port: int) -> None:
    """Control a running cluster: status, top, reload, scale, stop, broadcast."""
    app_name = info.app_import_path or os.environ.get("FLASK_APP") or "app"
    path = control_path(explicit=control_socket, pid_file=pid_file, uds=uds,
                        app_name=app_name, host=host, port=port)
    told = any(ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
               for name in ("control_socket", "pid_file", "uds", "host", "port"))
    ctx.obj = path if told or os.path.exists(path) else _find_cluster(app_name, path)


def _find_cluster(app_name: str, default: str) -> str:
    """The control socket of the one running cluster of ``app_name`` when ``cluster-ctl`` was
    given no address; with several, a usage error that lists them."""
    found = running(app_name)
    if len(found) == 1:
        return found[0]
    if not found:
        return default  # request() then says that nothing listens there
    lines = []
    for path in found:
        with contextlib.suppress(ControlError):
            master = request(path, {"command": "status"})["master"]
            lines.append(f"  {master['address']}  master pid {master['pid']}  "
                         f"up {master['uptime']}s  (--control-socket {path})")
    raise click.UsageError(f"{len(found)} clusters of {app_name} are running; choose one with "
                           "--port, --pid, --uds or --control-socket:\n" + "\n".join(lines))


def _send(ctx: click.Context, command: dict[str, Any]) -> dict[str, Any]:
    try:
        return request(ctx.find_object(str) or "", command)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from exc


@cluster_ctl.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def ctl_status(ctx: click.Context, as_json: bool) -> None:
    """Workers and their state, requests, memory and restarts."""
    reply = _send(ctx, {"command": "status"})
    if as_json:
        click.echo(json.dumps({"master": reply["master"], "workers": reply["workers"]}, indent=2))
        return
    master = reply["master"]
    click.echo(f"master {master['pid']}  {master['app']} on {master['address']}  "
               f"balance {master['balance']}  workers {master['workers']}  "
               f"threads {master['threads']}  up {master['uptime']}s")
    if master["last_error"]:
        click.echo(f"last error: {master['last_error']}")
    if master.get("holding"):
        click.echo(f"holding {master['holding']} new connection(s) until a worker is free")
    if master.get("workers_accept"):
        click.echo("every worker busy: each accepts new connections itself when free")
    broker = master.get("broker")
    if broker is not None:
        click.echo(f"broker {broker['url']} {broker['stream']}  "
                   f"{'connected' if broker['connected'] else 'DISCONNECTED'}  "
                   f"last id {broker['last_id'] or '-'}  lag {broker['lag_ms']}ms  "
                   f"buffered {broker['buffered']}{' (FULL)' if broker['full'] else ''}  "
                   f"missed {broker['missed']}  malformed {broker['malformed']}  "
                   f"link restarts {broker['link_restarts']}")
        click.echo(f"hosts seen {len(broker['hosts_seen'])}: {' '.join(broker['hosts_seen'])} "
                   f"(this one: {broker['host']})")
    rows = [STATUS_COLUMNS] + [tuple(str(w[c]) for c in STATUS_COLUMNS) for w in reply["workers"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(STATUS_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


@cluster_ctl.command("top")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and logs).")
@click.pass_context
def ctl_top(ctx: click.Context, once: bool) -> None:
    """Live view of the workers: req/s, p50/p99 over 10 s, in flight, memory, restarts."""
    if once:
        click.echo(frame(_send(ctx, {"command": "status"})), nl=False)
        return
    live(lambda: _send(ctx, {"command": "status"}))


@cluster_ctl.command("reload")
@click.pass_context
def ctl_reload(ctx: click.Context) -> None:
    """Rolling reload: replace every worker, one at a time."""
    _send(ctx, {"command": "reload"})
    click.echo("reload started")


@cluster_ctl.command("scale")
@click.argument("count", type=click.IntRange(1))
@click.pass_context
def ctl_scale(ctx: click.Context, count: int) -> None:
    """Run COUNT workers."""
    _send(ctx, {"command": "scale", "count": count})
    click.echo(f"scaling to {count} workers")


@cluster_ctl.command("stop")
@click.pass_context
def ctl_stop(ctx: click.Context) -> None:
    """Graceful stop."""
    _send(ctx, {"command": "stop"})
    click.echo("stopping")


@cluster_ctl.command("broadcast")
@click.argument("topic")
@click.option("--data", default="null", help="The message's data, as JSON.")
@click.pass_context
def ctl_broadcast(ctx: click.Context, topic: str, data: str) -> None:
    """Send TOPIC with --data to every worker's handlers."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc
    reply = _send(ctx, {"command": "broadcast", "topic": topic, "data": value})
    click.echo(f"delivered to {reply['delivered_to']} workers")
