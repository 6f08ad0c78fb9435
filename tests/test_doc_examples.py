"""The Python examples in README.md and docs/quickstart.rst run as written.

Each example is cut out of its document, imported as a module of its own, and its app answers
through Flask's test client, where broadcast and gather run in-process. An example that no
longer imports, or whose views fail, fails here instead of on a reader.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from flask import Flask

ROOT = Path(__file__).resolve().parent.parent


def markdown_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), re.S | re.M)


def rst_blocks(path: Path) -> list[str]:
    """The bodies of ``.. code-block:: python`` directives, dedented."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", path.read_text(), re.M):
        lines = match.group(1).rstrip("\n").split("\n")
        blocks.append("\n".join(line[3:] for line in lines) + "\n")
    return blocks


EXAMPLES = [
    pytest.param(markdown_blocks(ROOT / "README.md"), id="README.md"),
    pytest.param(rst_blocks(ROOT / "docs" / "quickstart.rst"), id="docs/quickstart.rst"),
]


def load(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)  # running the example is the test
    return module


@pytest.mark.parametrize("blocks", EXAMPLES)
def test_the_example_app_serves_its_views(blocks: list[str]) -> None:
    assert len(blocks) == 1, "one full example per document; update this test if that changed"
    module = load(blocks[0], "doc_example")
    app = module.create_app()
    assert isinstance(app, Flask)
    client = app.test_client()

    module.cache["ada"] = "cached"
    reply = client.post("/users/ada/clear")
    assert (reply.status_code, reply.get_json()) == (200, {"cleared": "ada"})
    assert "ada" not in module.cache  # the broadcast ran the local handler

    reply = client.get("/stats")
    assert reply.status_code == 200
    [stats] = reply.get_json()["workers"]  # outside cluster-run: one reply, this process's
    assert stats["worker"] is None
    assert stats["cached"] == 0
