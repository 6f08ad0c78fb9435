"""Where the running clusters of an app are: each master links its control socket into the
user's runtime directory under the app's name, so ``flask cluster-ctl`` finds the one cluster of
an app without being told its port, pid file or socket path.

The links live in ``$XDG_RUNTIME_DIR/flask-cluster/running/`` (``/tmp/flask-cluster-<uid>/``
without it), a directory only its owner may enter; a link left by a master that was killed is
removed by the next look.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import tempfile
from pathlib import Path


class RegistryError(Exception):
    """The runtime directory cannot be used; the message is one line for the user."""


def runtime_base() -> Path:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return Path(runtime_dir, "flask-cluster")
    return Path(tempfile.gettempdir(), f"flask-cluster-{os.getuid()}")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def make_private(directory: Path) -> None:
    """Create ``directory`` (mode 0700) or check that an existing one is ours alone."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RegistryError(f"{directory} is not a directory of yours: refusing to put the "
                            "control socket there (remove it, or choose one with "
                            "--control-socket)")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)


def register(app_name: str, control_path: str, pid: int) -> Path:
    """Link ``control_path`` as a running cluster of ``app_name``; returns the link."""
    directory = runtime_base() / "running"
    make_private(directory.parent)
    make_private(directory)
    link = directory / f"{safe_name(app_name)}.{pid}"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()  # a pid reused after a master was killed
    link.symlink_to(os.path.abspath(control_path))
    return link


def running(app_name: str) -> list[str]:
    """The control sockets of the live clusters of ``app_name``, oldest link first."""
    directory = runtime_base() / "running"
    found = []
    links = sorted(directory.glob(f"{safe_name(app_name)}.*"), key=_age)
    for link in links:
        target = os.readlink(link) if link.is_symlink() else ""
        if target and _answers(target):
            found.append(target)
        else:
            with contextlib.suppress(OSError):
                link.unlink()
    return found


def _age(link: Path) -> float:
    try:
        return link.lstat().st_mtime
    except OSError:
        return 0.0


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True
