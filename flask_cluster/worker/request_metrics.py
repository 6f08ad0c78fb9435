"""The worker's side of ``--metrics``: each answered request counted, for the master to read.

Counting is on the request path, so it is kept to a few list additions: :meth:`record` adds to
plain Python integers, and :meth:`flush` moves them to the worker's scoreboard counters on the
heartbeat (twice a second) and when the worker stops; a word of shared memory costs more than
twice as much to add to as a list item (callgrind, ``benchmarks.instructions --metrics``). The
loop thread is the only one that calls either, so the words have a single writer and need no
lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from time import monotonic
from typing import Any, NamedTuple

from ..http.wsgi import Response
from ..request_counters import (
    BODY_BYTES_IN,
    BODY_BYTES_OUT,
    BUCKETS,
    COUNTER_WORDS,
    DURATION_BUCKETS,
    DURATION_SUM_US,
    METHODS,
    STATUS_CLASSES,
    status_method_word,
)
from ..scoreboard import Scoreboard


class RequestMetrics(NamedTuple):
    record: Callable[[float, dict[str, Any], Response], None]  # app_call.Record
    flush: Callable[[], None]


def request_metrics(scoreboard: Scoreboard, slot: int) -> RequestMetrics:
    """``record(started, environ, response)`` when a request is answered (``started``: the
    monotonic time it was read); ``flush()`` to publish what was recorded."""
    words = scoreboard.words
    base = scoreboard.counters_base(slot)
    pending = [0] * COUNTER_WORDS
    seconds_pending = [0.0]  # the durations' sum, in microseconds only when published
    other = METHODS.index("other")
    server_error = STATUS_CLASSES.index("5xx")
    # By status // 100: no status yet (0) or past 5xx counts as a server error.
    row_of_class = [status_method_word(min(c - 1, server_error) if c else server_error, 0)
                    for c in range(10)]
    column_of_method = {name: index for index, name in enumerate(METHODS)}

    def record(started: float, environ: dict[str, Any], response: Response) -> None:
        seconds = monotonic() - started
        pending[row_of_class[response.status_code // 100 % 10]
                + column_of_method.get(environ["REQUEST_METHOD"], other)] += 1
        pending[DURATION_BUCKETS + bisect_left(BUCKETS, seconds)] += 1
        seconds_pending[0] += seconds
        pending[BODY_BYTES_OUT] += response.body_bytes
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                pending[BODY_BYTES_IN] += int(length)
            except ValueError:  # the parser let through a header it ignored: nothing to add
                pass

    def flush() -> None:
        pending[DURATION_SUM_US] += round(seconds_pending[0] * 1_000_000)
        seconds_pending[0] = 0.0
        for index, value in enumerate(pending):
            if value:
                words[base + index] += value
                pending[index] = 0

    return RequestMetrics(record, flush)
