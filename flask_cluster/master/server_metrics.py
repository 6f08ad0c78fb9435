"""The server's own metrics, as ``prometheus_client`` metric families, from one snapshot of the
master's state taken at scrape time (nothing is kept between scrapes but the counters)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from ..request_counters import (
    ACCEPTED,
    BODY_BYTES_IN,
    BODY_BYTES_OUT,
    BUCKETS,
    DURATION_BUCKETS,
    DURATION_SUM_US,
    METHODS,
    STATUS_CLASSES,
    status_method_word,
)

PREFIX = "flask_cluster_"
RESTART_REASONS = ("crash", "hung", "max-requests", "max-memory", "reload")


@dataclass(frozen=True)
class ServerState:
    counters: list[int]  # request_counters words, summed over exited and live workers
    in_flight: int
    untaken: int
    held: int  # connections the master holds until a worker has room (--threads 1)
    workers_accepting: bool  # the master leaves its listener to the workers (all were busy)
    connections: Mapping[str, int]  # accepted, handed_off, taken_back
    workers: Mapping[str, int]  # by state label
    restarts: Mapping[str, int]  # by reason
    rss_kib: Mapping[int, int]  # by worker id
    messages: Mapping[str, int]  # broadcasts, gathers, gather_timeouts


def families(state: ServerState) -> Iterator[Metric]:
    counters = state.counters
    requests = CounterMetricFamily(PREFIX + "requests", "Requests answered by the app, by "
                                   "status class and method.", labels=("status", "method"))
    for row, status in enumerate(STATUS_CLASSES):
        for column, method in enumerate(METHODS):
            requests.add_metric((status, method), counters[status_method_word(row, column)])
    yield requests
    cumulative, buckets = 0, []
    for bound, count in zip((*BUCKETS, float("inf")),
                            counters[DURATION_BUCKETS:DURATION_BUCKETS + len(BUCKETS) + 1],
                            strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(PREFIX + "request_duration_seconds", "Time from a request "
                                "taken up to its response handed to the socket.",
                                buckets=buckets, sum_value=counters[DURATION_SUM_US] / 1e6)
    yield _counter("received_body_bytes", "Request body bytes (by Content-Length).",
                   counters[BODY_BYTES_IN])
    yield _counter("sent_body_bytes", "Response body bytes.", counters[BODY_BYTES_OUT])
    yield _gauge("requests_in_flight", "Requests being answered now.", state.in_flight)
    by_workers = counters[ACCEPTED]
    yield _counter("connections_accepted", "Connections accepted, by the master or a worker.",
                   state.connections.get("accepted", 0) + by_workers)
    yield _counter("connections_accepted_by_workers", "Connections workers accepted "
                   "themselves (shared, reuseport; or while every worker was busy).", by_workers)
    yield _gauge("workers_accepting", "1 while the master leaves its listener to the workers, "
                 "every worker having been busy (--threads 1).", int(state.workers_accepting))
    yield _counter("connections_handed_off", "Connections the master passed to a worker.",
                   state.connections.get("handed_off", 0))
    yield _counter("connections_taken_back", "Connections that came back to the master (from "
                   "a retiring, dead or stuck worker) to be passed on.",
                   state.connections.get("taken_back", 0))
    yield _gauge("connections_untaken", "Connections passed to workers and not taken yet.",
                 state.untaken)
    yield _gauge("connections_held", "Connections the master holds until a worker has room "
                 "(--threads 1, every worker busy).", state.held)
    yield _labelled(GaugeMetricFamily, "workers", "Worker processes by state.", "state",
                    state.workers)
    yield _labelled(CounterMetricFamily, "worker_restarts", "Workers replaced, by reason.",
                    "reason", {reason: state.restarts.get(reason, 0) for reason in RESTART_REASONS})
    yield _labelled(GaugeMetricFamily, "worker_resident_memory_bytes", "Resident memory of "
                    "each worker (both processes while one is being replaced).", "worker",
                    {str(worker): kib * 1024 for worker, kib in state.rss_kib.items()})
    for name, text in (("broadcasts", "Broadcasts relayed to the workers."),
                       ("gathers", "Gathers sent to the workers."),
                       ("gather_timeouts", "Gathers that ended with a worker not answering.")):
        yield _counter(name, text, state.messages.get(name, 0))


def _counter(name: str, text: str, value: int) -> Metric:
    return CounterMetricFamily(PREFIX + name, text, value=value)


def _gauge(name: str, text: str, value: int) -> Metric:
    return GaugeMetricFamily(PREFIX + name, text, value=value)


def _labelled(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, text: str,
              label: str, values: Mapping[str, int]) -> Metric:
    family = kind(PREFIX + name, text, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)
    return family
