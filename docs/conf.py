"""Sphinx configuration for the flask_cluster docs.

Build from the repository root with::

    sphinx-build -W -b html docs docs/_build/html

The option tables are not written by hand: the ``cluster-run-options`` and ``cluster-ctl-commands``
directives below build them at every build from :mod:`flask_cluster.config` and the click commands
in :mod:`flask_cluster.cli`, so they cannot drift from the code and no generated file is kept.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # document the checkout, not some other installed copy

import flask_cluster  # noqa: E402
from flask_cluster import cli, config  # noqa: E402

project = "flask_cluster"
author = "flask_cluster contributors"
copyright = "flask_cluster contributors"  # noqa: A001 - Sphinx's name for it
release = flask_cluster.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Run one Flask app on every core."}
pygments_style = "sphinx"


# -- tables generated from the code --------------------------------------------------------------


def _cell(*children: nodes.Node | str) -> nodes.entry:
    paragraph = nodes.paragraph()
    for child in children:
        paragraph += nodes.Text(child) if isinstance(child, str) else child
    entry = nodes.entry()
    entry += paragraph
    return entry


def _table(header: list[str], rows: list[list[nodes.entry]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["longtable"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head_row = nodes.row()
    for title in header:
        head_row += _cell(title)
    head += head_row
    group += head
    body = nodes.tbody()
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            row += cell
        body += row
    group += body
    return table


def _describe_type(meta: dict[str, Any]) -> str:
    """What a setting accepts, in words, from its click type."""
    kind = meta["type"]
    if meta["flag"]:
        return "flag"
    if isinstance(kind, config.WorkerCount):
        return "auto or an integer ≥ 1"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(kind.choices)
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        noun = "integer" if isinstance(kind, click.IntRange) else "number"
        low = "" if kind.min is None else f"{'>' if kind.min_open else '≥'} {kind.min:g}"
        high = "" if kind.max is None else f"{'<' if kind.max_open else '≤'} {kind.max:g}"
        return f"{noun} " + ", ".join(part for part in (low, high) if part)
    if isinstance(kind, click.Path):
        return "path"
    return "text"


def _default(meta: dict[str, Any]) -> nodes.Node | str:
    value = meta["cli_default"]
    if meta["flag"]:
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return nodes.literal(text=str(value))


class ClusterRunOptions(SphinxDirective):
    """Every ``flask cluster-run`` option, from the fields of :class:`flask_cluster.config.Config`."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(config.__file__)  # re-read this page when the settings change
        rows = []
        for item in config.settings():
            meta = item.metadata
            flag = meta["flag"] or config.option_name(item.name)
            env = config.ENV_PREFIX + item.name.upper()
            rows.append([
                _cell(nodes.literal(text=flag)),
                _cell(_default(meta)),
                _cell(nodes.literal(text=env)),
                _cell(meta["help"], " Accepts: ", _describe_type(meta), "."),
            ])
        return [_table(["Option", "Default", "Environment variable", "Meaning"], rows, [22, 12, 30, 46])]


class ClusterCtlCommands(SphinxDirective):
    """The ``flask cluster-ctl`` subcommands and the options that locate the cluster, from the
    click group in :mod:`flask_cluster.cli`."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(cli.__file__)  # re-read this page when the commands change
        group = cli.cluster_ctl
        context = click.Context(group, info_name="flask cluster-ctl")
        rows = []
        for name, command in group.commands.items():
            pieces = [piece for piece in command.collect_usage_pieces(context) if piece != "[OPTIONS]"]
            options = [param for param in command.params if isinstance(param, click.Option)]
            usage = " ".join(["flask cluster-ctl", name, *(f"[{o.opts[0]}]" for o in options), *pieces])
            cells: list[nodes.Node | str] = [command.help or ""]
            for option in options:
                cells += [" ", nodes.literal(text="/".join(option.opts)), f": {option.help}"]
            rows.append([_cell(nodes.literal(text=usage)), _cell(*cells)])
        option_rows = []
        for param in group.params:
            if not isinstance(param, click.Option):
                continue
            value = param.get_default(context, call=False)
            # click < 8.2 says None for "no default", newer click a sentinel object
            default = nodes.literal(text=str(value)) if isinstance(value, (str, int, float)) else "none"
            envvar = param.envvar if isinstance(param.envvar, str) else ""
            option_rows.append([
                _cell(nodes.literal(text=" ".join(param.opts))),
                _cell(default),
                _cell(nodes.literal(text=envvar)),
                _cell(param.help or f"The --{param.name} given to cluster-run."),
            ])
        intro = nodes.paragraph(text="Options that say which cluster to talk to. They go before the "
                                     "command, as in ")
        intro += nodes.literal(text="flask cluster-ctl --pid /run/myapp.pid status")
        intro += nodes.Text(":")
        return [
            _table(["Command", "What it does"], rows, [40, 60]),
            intro,
            _table(["Option", "Default", "Environment variable", "Meaning"], option_rows,
                   [20, 14, 34, 32]),
        ]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cluster-run-options", ClusterRunOptions)
    app.add_directive("cluster-ctl-commands", ClusterCtlCommands)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
