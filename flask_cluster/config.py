"""The one table of settings for ``flask cluster-run``.

Every setting is a field of :class:`Config`; its metadata holds the help text and the click
type. The command line, the ``FLASK_CLUSTER_RUN_*`` environment variables and the option table
in the docs are all generated from these fields, so a new setting is added in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import click

from .logs import LOG_FORMATS, LOG_LEVELS

BALANCE_MODES = ("round-robin", "least-busy", "shared", "reuseport")
ENV_PREFIX = "FLASK_CLUSTER_RUN_"


class WorkerCount(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """``auto`` (returned as ``None``) or a whole number of at least 1."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return None
        try:
            count = int(text)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a whole number", param, ctx)
        if count < 1:
            self.fail(f"{count} is less than 1", param, ctx)
        return count


class Port(click.IntRange):
    """A TCP port, 0-65535; one message whether the value is no number or out of range."""

    name = "port"

    def __init__(self) -> None:
        super().__init__(0, 65535)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"port must be 0-65535, not {value!r}", param, ctx)


class MetricsAddress(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), kept as given; the master binds it."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return value
        try:
            split_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


def split_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` -> ``("127.0.0.1", 9100)``; ValueError with a one-line reason."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (a port 0-65535)")
    return host, int(port)


def setting(default: Any, help: str, *, type: Any = None, flag: str | None = None,
            cli_default: Any = None) -> Any:
    """A :class:`Config` field with what the command line needs to offer it.

    ``cli_default`` is the spelling the command line shows when it differs from the value
    (``auto`` for ``workers=None``).
    """
    return field(default=default, metadata={
        "help": help, "type": type, "flag": flag,
        "cli_default": default if cli_default is None else cli_default,
    })


@dataclass(frozen=True)
class Config:
    """Everything the master and its workers need to know, fixed before the first fork."""

    host: str = setting("127.0.0.1", "TCP address to listen on.")
    port: int = setting(5000, "TCP port to listen on (0 picks a free one).",
                        type=Port())
    uds: str | None = setting(None, "Listen on this Unix socket path instead of TCP.",
                              type=click.Path(dir_okay=False))
    workers: int | None = setting(None, "Worker processes: 'auto' (CPUs this process may use) or N.",
                                  type=WorkerCount(), cli_default="auto")
    threads: int = setting(1, "App threads per worker (1 runs the app on the event loop).",
                           type=click.IntRange(1, 1024))
    balance: str = setting("round-robin", "How connections reach workers.",
                           type=click.Choice(BALANCE_MODES))
    graceful_timeout: float = setting(30.0, "Seconds in-flight requests may take to finish on stop.",
                                      type=click.FloatRange(0))
    timeout: float = setting(30.0, "A worker silent this many seconds is killed and replaced.",
                             type=click.FloatRange(0, min_open=True))
    keep_alive: float = setting(5.0, "Seconds an idle keep-alive connection stays open.",
                                type=click.FloatRange(0))
    header_timeout: float = setting(10.0, "Seconds a client may take to send a request's headers "
                                    "(slowloris guard; 408 after).", type=click.FloatRange(0, min_open=True))
    max_connections: int = setting(1000, "Open connections per worker; more wait in the backlog "
                                   "(shared, reuseport) or get 503.", type=click.IntRange(1))
    limit_request_line: int = setting(8190, "Longest request target in bytes (414 above).",
                                      type=click.IntRange(64))
    limit_request_fields: int = setting(100, "Most header fields in a request (431 above).",
                                        type=click.IntRange(1))
    limit_request_field_size: int = setting(8190, "Largest single header field (name and value) "
                                            "in bytes (431 above).", type=click.IntRange(64))
    limit_request_header_bytes: int = setting(65536, "Largest header block in bytes (431 above).",
                                              type=click.IntRange(256))
    max_body: int = setting(0, "Largest request body in bytes (413 above; 0: no limit). Bodies "
                            "over 1 MiB are spooled to a temporary file.", type=click.IntRange(0))
    forwarded_allow_ips: str = setting(
        "127.0.0.1,::1", "Comma-separated proxy addresses whose X-Forwarded-For and "
        "X-Forwarded-Proto are trusted ('*': any).")
    max_requests: int = setting(0, "Recycle a worker after this many requests (0: never).",
                                type=click.IntRange(0))
    max_requests_jitter: int = setting(0, "Add up to this many requests to --max-requests per worker.",
                                       type=click.IntRange(0))
    max_memory: int = setting(0, "Recycle a worker whose resident memory stays above this many MiB.",
                              type=click.IntRange(0))
    cert: str | None = setting(None, "TLS certificate (chain) file in PEM format.",
                               type=click.Path(exists=True, dir_okay=False))
    key: str | None = setting(None, "TLS private key file in PEM format.",
                              type=click.Path(exists=True, dir_okay=False))
    pid: str | None = setting(None, "Write the master's pid to this file.",
                              type=click.Path(dir_okay=False))
    control_socket: str | None = setting(
        None, "Unix socket for 'flask cluster-ctl' (default: derived from --pid, --uds or the address).",
        type=click.Path(dir_okay=False))
    access_log: bool = setting(False, "Log one line per request (on by default with --reload).",
                               flag="--access-log/--no-access-log")
    access_log_format: str = setting(
        '{remote} - - [{time}] "{method} {uri} {protocol}" {status} {size}',
        "Access log line; fields: remote, time, method, uri, protocol, status, size, "
        "duration_ms, user_agent, referer, pid.")
    reload: bool = setting(False, "Development: rolling reload when a source file changes.",
                           flag="--reload/--no-reload")
    log_level: str = setting("info", "Least severe log lines written.",
                             type=click.Choice(LOG_LEVELS))
    log_format: str = setting("text", "Log lines as text (for people) or one JSON object each "
                              "(for log shippers); the access log follows.",
                              type=click.Choice(LOG_FORMATS))
    broker: str | None = setting(
        None, "redis://HOST:PORT/DB or rediss:// (TLS): broadcasts reach every host sharing it "
        "(password in the URL or from REDIS_PASSWORD; needs flask-cluster[redis]).")
    cluster_name: str | None = setting(
        None, "Separates apps that share one broker: one stream per name (default: the app's "
        "import name).")
    broker_buffer: int = setting(
        10000, "Broadcasts held in order while the broker is unreachable; past it, broadcast() "
        "raises BrokerBufferFull.", type=click.IntRange(1))
    broker_stream_len: int = setting(
        100000, "Broadcasts the broker keeps (MAXLEN ~): a host away for longer misses the "
        "oldest and logs how many.", type=click.IntRange(100))
    queue_depth: int = setting(
        1, "With --threads 1 (round-robin, least-busy): connections passed to a worker whose "
        "request started less than 1 ms ago while none is free; the master holds the rest until "
        "one is, and meanwhile lets each worker accept when free (0: only ever to a free "
        "worker).", type=click.IntRange(0))
    metrics: str | None = setting(
        None, "HOST:PORT where the master serves Prometheus /metrics: the server's counters and "
        "the app's prometheus_client metrics summed over workers (needs flask-cluster[metrics]).",
        type=MetricsAddress())

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def workers_accept_when_busy(self) -> bool:
        """The master leaves its listener to the workers while none has room: round-robin and
        least-busy with the app on the loop (master/dispatch.py, worker/accepting.py)."""
        return self.threads == 1 and self.balance in ("round-robin", "least-busy")


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Config)


def click_options() -> list[click.Option]:
    """One click option per setting, each also read from ``FLASK_CLUSTER_RUN_<NAME>``."""
    options = []
    for item in settings():
        meta = item.metadata
        decls = [meta["flag"] or option_name(item.name), item.name]
        options.append(click.Option(
            decls,
            type=None if meta["flag"] else meta["type"],
            default=meta["cli_default"],
            help=meta["help"],
            envvar=ENV_PREFIX + item.name.upper(),
            show_default=meta["cli_default"] is not None,
            show_envvar=True,
        ))
    return options
