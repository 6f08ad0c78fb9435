"""Load generation: wrk with ``bench.lua`` when it is installed, else a Python fallback.

Both return the same :class:`LoadResult`. The fallback (asyncio, one process) is bounded in time
and measures the same things, but it needs far more CPU per request than wrk and shares the two
cores with the server, so its requests/s say more about the client than the server: use it to
check that the harness runs, not to compare servers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .workloads import CONNECTIONS, SLOW_EVERY, Workload

LUA_SCRIPT = Path(__file__).with_name("bench.lua")
REQUEST_TIMEOUT = 2.0  # as wrk's default --timeout: slower responses count as timeouts
ERROR_KINDS = ("connect", "read", "write", "timeout", "status")


@dataclass
class RouteStats:
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]  # socket errors by kind, and "status": HTTP responses >= 400
    routes: dict[str, RouteStats] = field(default_factory=dict)  # mixed: "fast" and "slow"
    unmatched: int = 0  # mixed, wrk: responses without the echoed X-Bench-Id

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(url: str, workload: Workload, seconds: float, tool: str) -> LoadResult:
    if tool == "wrk":
        return run_wrk(url, workload, seconds)
    return asyncio.run(python_load(url, workload, seconds))


# -- wrk --------------------------------------------------------------------------------------

def run_wrk(url: str, workload: Workload, seconds: float) -> LoadResult:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
               f"--timeout={REQUEST_TIMEOUT:g}s", "-s", str(LUA_SCRIPT)]
    if workload.close:
        command += ["-H", "Connection: close"]
    command.append(url + workload.path)
    env = {**os.environ, "BENCH_SLOW_EVERY": str(SLOW_EVERY if workload.mixed else 0)}
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=seconds + 30, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return _from_wrk(json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()}"
                       f"{done.stdout.strip()}")


def _ms(microseconds: float) -> float:
    return round(microseconds / 1000, 3)


def _from_wrk(data: dict[str, Any]) -> LoadResult:
    routes = {
        name: RouteStats(stats["requests"], _ms(stats["p50_us"]), _ms(stats["p99_us"]),
                         _ms(stats["max_us"]), stats["errors"])
        for name, stats in data.get("routes", {}).items()
    }
    return LoadResult(
        tool="wrk", requests=data["requests"], seconds=data["duration_us"] / 1e6,
        p50_ms=_ms(data["p50_us"]), p99_ms=_ms(data["p99_us"]), max_ms=_ms(data["max_us"]),
        errors=data["errors"], routes=routes, unmatched=data.get("unmatched", 0),
    )


# -- the Python fallback ----------------------------------------------------------------------

class _Recorder:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {"fast": [], "slow": []}
        self.route_errors = {"fast": 0, "slow": 0}
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.sent = 0

    def next_route(self, workload: Workload) -> str:
        self.sent += 1
        return "slow" if workload.mixed and self.sent % SLOW_EVERY == 0 else "fast"

    def record(self, route: str, seconds: float, status: int) -> None:
        self.samples[route].append(seconds)
        if status >= 400:
            self.errors["status"] += 1
        if not 200 <= status <= 299:
            self.route_errors[route] += 1


def _stats(samples: list[float], errors: int) -> RouteStats:
    ordered = sorted(samples)

    def pick(p: float) -> float:
        if not ordered:
            return 0.0
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000, 3)

    return RouteStats(len(ordered), pick(50), pick(99), pick(100), errors)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, whether the connection may be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
    keep = version == "HTTP/1.1" and headers.get("connection") != "close"
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.read()
        keep = False
    return int(status), keep


async def _client(host: str, port: int, workload: Workload, deadline: float,
                  recorder: _Recorder) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    extra = "Connection: close\r\n" if workload.close else ""
    while time.monotonic() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        REQUEST_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                recorder.errors["connect"] += 1
                await asyncio.sleep(0.01)
                continue
        assert reader is not None and writer is not None
        route = recorder.next_route(workload)
        path = "/slow" if route == "slow" else workload.path
        started = time.perf_counter()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode())
            status, keep = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            recorder.errors["timeout"] += 1
            keep = False
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            recorder.errors["read"] += 1
            keep = False
        else:
            recorder.record(route, time.perf_counter() - started, status)
        if not keep:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def python_load(url: str, workload: Workload, seconds: float) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    recorder = _Recorder()
    started = time.monotonic()
    deadline = started + seconds
    clients = [_client(host, port, workload, deadline, recorder) for _ in range(CONNECTIONS)]
    try:
        await asyncio.wait_for(asyncio.gather(*clients), seconds + REQUEST_TIMEOUT + 1)
    except asyncio.TimeoutError:
        recorder.errors["timeout"] += 1
    elapsed = time.monotonic() - started
    everything = _stats(recorder.samples["fast"] + recorder.samples["slow"], 0)
    routes = {}
    if workload.mixed:
        routes = {name: _stats(samples, recorder.route_errors[name])
                  for name, samples in recorder.samples.items()}
    return LoadResult(tool="python", requests=everything.requests, seconds=elapsed,
                      p50_ms=everything.p50_ms, p99_ms=everything.p99_ms,
                      max_ms=everything.max_ms, errors=recorder.errors, routes=routes)
