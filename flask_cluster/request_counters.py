"""The layout of each worker's request counters on the scoreboard (``--metrics``).

Both process sides read this table: the worker adds to the words on its request path
(:mod:`.worker.request_metrics`), the master sums them for ``/metrics`` and ``cluster-ctl top``
(:mod:`.master.totals`, :mod:`.master.recent`). Every word is a running total that only its
worker writes, so a reader needs no lock and a delta between two reads is a rate.
"""

from __future__ import annotations

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
# Upper bounds in seconds of the duration histogram's buckets; the last word is +Inf.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Word offsets within a slot's counters: one word per (status class, method) pair, so a request
# costs one addition for both labels; then the histogram, its sum, and the body bytes.
BY_STATUS_METHOD = 0
DURATION_BUCKETS = BY_STATUS_METHOD + len(STATUS_CLASSES) * len(METHODS)
DURATION_SUM_US = DURATION_BUCKETS + len(BUCKETS) + 1
BODY_BYTES_IN = DURATION_SUM_US + 1
BODY_BYTES_OUT = BODY_BYTES_IN + 1
# Connections the worker accepted on a listener itself (shared, reuseport, or the master's
# while it leaves it to the workers): written at every accept, --metrics or not.
ACCEPTED = BODY_BYTES_OUT + 1
COUNTER_WORDS = ACCEPTED + 1


def status_method_word(status_class: int, method: int) -> int:
    """The word of requests answered with ``STATUS_CLASSES[status_class]`` to ``METHODS[method]``."""
    return BY_STATUS_METHOD + status_class * len(METHODS) + method


def requests(counters: list[int]) -> int:
    """All requests counted in ``counters`` (one slot's words, or their sum)."""
    return sum(counters[BY_STATUS_METHOD:DURATION_BUCKETS])
