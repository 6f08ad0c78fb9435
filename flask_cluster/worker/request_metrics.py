"""The worker's side of ``--metrics``: each answered request added to its scoreboard counters.

Called once per request on the loop thread, the only writer of these words, so plain additions
are enough. Everything that can be worked out before the first request (word indexes, the method
table) is, so a request costs a handful of additions and one bisection.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..http.wsgi import Response
from ..request_counters import (
    BODY_BYTES_IN,
    BODY_BYTES_OUT,
    BUCKETS,
    DURATION_BUCKETS,
    DURATION_SUM_US,
    METHODS,
    STATUS_CLASSES,
    status_method_word,
)
from ..scoreboard import Scoreboard
from .access_log import STARTED

Recorder = Callable[[dict[str, Any], Response], None]


def request_recorder(scoreboard: Scoreboard, slot: int) -> Recorder:
    """What the engine calls when a request is answered; ``environ[STARTED]`` holds when it
    was taken up (the engine sets it whenever a recorder or an access log is on)."""
    words = scoreboard.words
    base = scoreboard.counters_base(slot)
    other = METHODS.index("other")
    server_error = STATUS_CLASSES.index("5xx")
    # By status // 100: no status yet (0) or past 5xx counts as a server error.
    row_of_class = [base + status_method_word(min(c - 1, server_error) if c else server_error, 0)
                    for c in range(10)]
    column_of_method = {name: index for index, name in enumerate(METHODS)}
    buckets = base + DURATION_BUCKETS
    sum_us, bytes_in, bytes_out = base + DURATION_SUM_US, base + BODY_BYTES_IN, base + BODY_BYTES_OUT

    def record(environ: dict[str, Any], response: Response) -> None:
        seconds = perf_counter() - environ[STARTED]
        words[row_of_class[response.status_code // 100 % 10]
              + column_of_method.get(environ["REQUEST_METHOD"], other)] += 1
        words[buckets + bisect_left(BUCKETS, seconds)] += 1
        words[sum_us] += int(seconds * 1_000_000)
        words[bytes_out] += response.body_bytes
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                words[bytes_in] += int(length)
            except ValueError:  # the parser let through a header it ignored: nothing to add
                pass

    return record
