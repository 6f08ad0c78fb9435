"""The package as users get it: the sdist and wheel that ``python -m build`` makes, installed into
a fresh virtual environment, serve a request with the example app from outside the clone.

Everything else in the suite imports the checkout, so a module or ``py.typed`` left out of the
wheel, or a file missing from the sdist the wheel is built from, fails only here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, ClusterProcess, cluster_env

STEP_TIMEOUT = 300.0  # one build or install on a loaded machine, with the registry behind it


def run(*command: str | Path, cwd: Path) -> str:
    """Run one step; its output is in the failure message when it fails."""
    done = subprocess.run([str(part) for part in command], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.timeout(4 * STEP_TIMEOUT)
def test_the_built_wheel_serves_the_example_app(tmp_path: Path) -> None:
    # A copy without what earlier installs leave in the clone: setuptools adds every file that a
    # stale flask_cluster.egg-info/SOURCES.txt lists, which would hide a file left out here.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "*.egg-info", "build", "dist", "_build", "__pycache__", ".*_cache",
        ".tox", ".hypothesis", ".xprocess"))
    dist = tmp_path / "dist"
    # sdist first, then the wheel from the unpacked sdist, as a publishing run would
    run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=tmp_path)
    wheels = list(dist.glob("flask_cluster-*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    assert len(list(dist.glob("flask_cluster-*.tar.gz"))) == 1

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheels[0], cwd=tmp_path)
    run(python, "-m", "pip", "install", "-q", "flask", "werkzeug", "httptools", cwd=tmp_path)

    app_dir = tmp_path / "site"
    shutil.copytree(ROOT / "example_app", app_dir / "example_app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    installed = Path(run(python, "-c", "import flask_cluster; print(flask_cluster.__file__)",
                         cwd=app_dir).strip()).parent
    assert installed.is_relative_to(env_dir), installed  # the wheel's copy, not the clone
    assert (installed / "py.typed").is_file()

    env = cluster_env()
    del env["PYTHONPATH"]  # cluster_env points it at the clone; here only the venv may answer
    log_path = tmp_path / "cluster.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(env_dir / "bin" / "flask"), "--app", "example_app", "cluster-run",
             "--workers", "1", "--host", "127.0.0.1", "--port", "0", "--graceful-timeout", "5"],
            cwd=app_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    cluster = ClusterProcess(proc, log_path, graceful_timeout=5.0)
    try:
        cluster.wait_started()
        reply = cluster.request("/")
        assert (reply.status, reply.text) == (200, "Hello, World!")
        assert cluster.get_json("/worker")["worker_id"] == 0
    finally:
        cluster.stop()
