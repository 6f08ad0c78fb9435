"""What the numbers were measured on: CPU, kernel, Python, package versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("flask-cluster", "flask", "werkzeug", "httptools", "gunicorn", "granian", "waitress")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    first = (done.stdout or done.stderr).splitlines()[0]
    return first.split(" Copyright")[0].removeprefix("wrk ").strip()


def source_revision() -> str:
    """The commit of the flask_cluster checkout being measured, and whether the package has
    uncommitted changes."""
    repo = str(Path(__file__).resolve().parent.parent)

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                                  check=False)
        except OSError:
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    edited = git("status", "--porcelain", "--", "flask_cluster")
    return f"{commit} + uncommitted changes in flask_cluster/" if edited else commit


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["flask-cluster commit"] = source_revision()
    found["wrk"] = wrk_version()
    return found


def busy_cpu_seconds() -> float:
    """CPU time spent by every process on the machine (all CPUs) since boot: /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
