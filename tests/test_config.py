"""The settings table: every :class:`Config` field is a ``flask cluster-run`` option that can also
come from ``FLASK_CLUSTER_RUN_<NAME>``, with the table's default, type and help."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest
from click.testing import CliRunner

from flask_cluster.cli import cluster_run
from flask_cluster.config import (
    BALANCE_MODES,
    ENV_PREFIX,
    Config,
    WorkerCount,
    click_options,
    option_name,
    settings,
)

FIELDS = [item.name for item in dataclasses.fields(Config)]


def command(seen: list[Config]) -> click.Command:
    """A command with exactly the table's options; it records the Config it would run."""

    def run(**options: Any) -> None:
        seen.append(Config(**options))

    return click.Command("run", callback=run, params=click_options())


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, Config | None]:
    """Exit code, output and the parsed Config, as the command line would see them."""
    seen: list[Config] = []
    clean: dict[str, str | None] = {ENV_PREFIX + name.upper(): None for name in FIELDS}
    result = CliRunner().invoke(command(seen), args, env={**clean, **(env or {})})
    return result.exit_code, result.output, seen[0] if seen else None


# -- the table and the options ------------------------------------------------------------------


def test_every_setting_is_an_option_with_its_envvar() -> None:
    options = {option.name: option for option in click_options()}

    assert list(options) == FIELDS
    for name, option in options.items():
        assert option.envvar == f"FLASK_CLUSTER_RUN_{name.upper()}"
        assert option.show_envvar
        assert option.help
        assert option_name(name) in option.opts


def test_the_command_line_offers_every_setting() -> None:
    names = {param.name for param in cluster_run.params}

    assert set(FIELDS) <= names


def test_settings_are_the_dataclass_fields() -> None:
    assert [item.name for item in settings()] == FIELDS
    assert set(Config().options()) == set(FIELDS)


def test_option_names() -> None:
    assert option_name("graceful_timeout") == "--graceful-timeout"
    assert option_name("workers") == "--workers"
    assert ENV_PREFIX == "FLASK_CLUSTER_RUN_"


def test_no_arguments_give_the_table_defaults() -> None:
    code, output, config = invoke([])

    assert code == 0, output
    assert config == Config()
    assert config.workers is None  # "auto"
    assert config.balance == "round-robin"


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().workers = 3  # type: ignore[misc]


def test_help_shows_defaults_and_envvars() -> None:
    result = CliRunner().invoke(command([]), ["--help"])

    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name in FIELDS:
        assert f"FLASK_CLUSTER_RUN_{name.upper()}" in text
    assert "default: auto" in text
    assert "--access-log / --no-access-log" in text


# -- values from the command line and the environment -------------------------------------------


@pytest.mark.parametrize(("args", "env", "field", "value"), [
    (["--workers", "3"], {}, "workers", 3),
    (["--workers", "auto"], {}, "workers", None),
    ([], {"FLASK_CLUSTER_RUN_WORKERS": "4"}, "workers", 4),
    ([], {"FLASK_CLUSTER_RUN_WORKERS": "AUTO"}, "workers", None),
    (["--threads", "8"], {}, "threads", 8),
    ([], {"FLASK_CLUSTER_RUN_THREADS": "2"}, "threads", 2),
    ([], {"FLASK_CLUSTER_RUN_BALANCE": "least-busy"}, "balance", "least-busy"),
    ([], {"FLASK_CLUSTER_RUN_KEEP_ALIVE": "0.5"}, "keep_alive", 0.5),
    ([], {"FLASK_CLUSTER_RUN_GRACEFUL_TIMEOUT": "0"}, "graceful_timeout", 0.0),
    (["--port", "0"], {}, "port", 0),
    ([], {"FLASK_CLUSTER_RUN_PORT": "65535"}, "port", 65535),
    ([], {"FLASK_CLUSTER_RUN_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
    (["--access-log"], {}, "access_log", True),
    ([], {"FLASK_CLUSTER_RUN_ACCESS_LOG": "1"}, "access_log", True),
    ([], {"FLASK_CLUSTER_RUN_ACCESS_LOG": "false"}, "access_log", False),
    (["--no-access-log"], {"FLASK_CLUSTER_RUN_ACCESS_LOG": "true"}, "access_log", False),
    (["--workers", "2"], {"FLASK_CLUSTER_RUN_WORKERS": "7"}, "workers", 2),  # argument wins
])
def test_values(args: list[str], env: dict[str, str], field: str, value: Any) -> None:
    code, output, config = invoke(args, env)

    assert code == 0, output
    assert config is not None
    assert getattr(config, field) == value


@pytest.mark.parametrize("balance", BALANCE_MODES)
def test_every_balance_mode_is_accepted(balance: str) -> None:
    code, output, config = invoke(["--balance", balance])

    assert code == 0, output
    assert config is not None and config.balance == balance


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--workers", "0"], {}, "0 is less than 1"),
    (["--workers", "-2"], {}, "less than 1"),
    (["--workers", "many"], {}, "neither 'auto' nor a whole number"),
    (["--workers", "1.5"], {}, "neither 'auto' nor a whole number"),
    ([], {"FLASK_CLUSTER_RUN_WORKERS": "zero"}, "neither 'auto' nor a whole number"),
    (["--threads", "0"], {}, "--threads"),
    (["--port", "70000"], {}, "port must be 0-65535, not '70000'"),
    (["--port", "abc"], {}, "port must be 0-65535, not 'abc'"),
    (["--port", "-1"], {}, "port must be 0-65535"),
    ([], {"FLASK_CLUSTER_RUN_PORT": "http"}, "port must be 0-65535, not 'http'"),
    (["--balance", "random"], {}, "--balance"),
    ([], {"FLASK_CLUSTER_RUN_BALANCE": "random"}, "random"),
    (["--keep-alive", "-1"], {}, "--keep-alive"),
    (["--timeout", "0"], {}, "--timeout"),
])
def test_bad_values_are_refused_with_the_reason(args: list[str], env: dict[str, str],
                                                message: str) -> None:
    code, output, config = invoke(args, env)

    assert code == 2
    assert config is None
    assert message in output


# -- WorkerCount ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", None), ("AUTO", None), (" auto ", None), ("1", 1), (" 12 ", 12), (5, 5), (None, None),
])
def test_worker_count_converts(value: Any, expected: int | None) -> None:
    assert WorkerCount().convert(value, None, None) == expected


@pytest.mark.parametrize("value", ["0", "-1", "", "two", "1.0", "0x2", "auto4"])
def test_worker_count_rejects(value: str) -> None:
    with pytest.raises(click.BadParameter):
        WorkerCount().convert(value, None, None)
