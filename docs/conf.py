"""Sphinx configuration for the flask_cluster docs.

Build from the repository root with::

    sphinx-build -W -b html docs docs/_build/html

Nothing about the options is written by hand: the ``cluster-run-options`` directive below builds
one section per setting from :mod:`flask_cluster.config` at every build, and ``sphinx-click``
builds the command reference from the click commands in :mod:`flask_cluster.cli`, so neither can
drift from the code and no generated file is kept.
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
from flask_cluster import config  # noqa: E402

project = "flask_cluster"
author = "the flask_cluster authors"
copyright = "the flask_cluster authors"  # noqa: A001 - Sphinx's name for it
release = flask_cluster.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx_click",
    "sphinx_copybutton",
    "pallets_sphinx_themes",
]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
exclude_patterns = ["_build"]

# The theme of Flask's own docs, so the pages read as part of the Flask ecosystem.
html_theme = "flask"
html_theme_options = {"index_sidebar_logo": False}
html_title = f"flask_cluster documentation ({version})"
html_show_sourcelink = False
# The theme's default sidebars include an ad slot for Read the Docs; these docs carry none.
html_sidebars = {"**": ["localtoc.html", "relations.html", "searchbox.html"]}
html_static_path = ["_static"]
html_css_files = ["fit.css"]

# Copy the command, not the prompt or the output shown after it.
copybutton_prompt_text = r"\$ |>>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_line_continuation_character = "\\"


# -- the options, generated from the code ---------------------------------------------------------


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


def _line(label: str, value: nodes.Node | str) -> nodes.line:
    line = nodes.line()
    line += nodes.strong(text=label + ": ")
    line += nodes.Text(value) if isinstance(value, str) else value
    return line


class ClusterRunOptions(SphinxDirective):
    """One section per ``flask cluster-run`` option, from the fields of
    :class:`flask_cluster.config.Config`: its name, environment variable, default, what it accepts
    and its help, as gunicorn's settings page shows them. Sections, not a table, so that a long
    name or help text wraps instead of pushing a column off a narrow screen."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(config.__file__)  # re-read this page when the settings change
        sections: list[nodes.Node] = []
        for item in config.settings():
            meta = item.metadata
            flag = meta["flag"] or config.option_name(item.name)
            section = nodes.section(ids=["option-" + item.name.replace("_", "-")])
            section += nodes.title("", "", nodes.literal(text=flag))
            # Lines, not a field list: a field list's label column cannot shrink on a phone.
            lines = nodes.line_block()
            lines += _line("Environment", nodes.literal(text=config.ENV_PREFIX + item.name.upper()))
            lines += _line("Default", _default(meta))
            lines += _line("Accepts", _describe_type(meta))
            section += lines
            section += nodes.paragraph(text=meta["help"])
            sections.append(section)
        return sections


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cluster-run-options", ClusterRunOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
