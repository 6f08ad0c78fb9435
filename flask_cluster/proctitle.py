"""Process titles (``flask-cluster master [app]``) when the ``proctitle`` extra is installed."""

from __future__ import annotations

try:
    import setproctitle
except ImportError:  # optional extra: without it, ps shows the command line
    setproctitle = None  # type: ignore[assignment, unused-ignore]  # typed only when installed


def set_title(title: str) -> None:
    if setproctitle is not None:
        setproctitle.setproctitle(title)
