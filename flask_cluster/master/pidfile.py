"""The ``--pid`` file: written at start, removed at exit only while it still names us."""

from __future__ import annotations

import contextlib
import os


class PidFileError(Exception):
    """The ``--pid`` file cannot be written; the message is the one line the user sees."""


def write_pid(path: str | None, pid: int) -> None:
    if not path:
        return
    try:
        with open(path, "w") as pid_file:
            pid_file.write(f"{pid}\n")
    except OSError as exc:
        raise PidFileError(f"cannot write the pid file {path}: {exc.strerror or exc}") from None


def remove_pid(path: str | None, pid: int) -> None:
    if not path:
        return
    with contextlib.suppress(OSError):
        with open(path) as pid_file:
            ours = pid_file.read().strip() == str(pid)
        if ours:
            os.unlink(path)
