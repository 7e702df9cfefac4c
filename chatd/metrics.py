"""Prometheus metrics of one daemon, in a registry of its own (no global state).

The figures counted on every command and every commit (commands by op and
outcome, send ack time, batch size, commit time) are plain Python numbers,
turned into metric families only when /metrics is scraped (:class:`_Hot`):
prometheus_client's Counter and Histogram take a lock and walk their buckets in
Python on each update, which was 7 % of the event loop's time at 10,000 sends/s.
The rest are prometheus_client's own.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from math import inf

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

__all__ = ["CONTENT_TYPE", "Metrics"]


class _Histogram:
    """Bucket counts and a sum; :meth:`family` makes the cumulative metric."""

    __slots__ = ("bounds", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc = name, doc
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        total, buckets = 0, []
        for bound, n in zip((*self.bounds, inf), self.counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == inf else repr(float(bound)), total))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)


class _Hot:
    """The collector of the per-command and per-commit figures."""

    def __init__(self, commands: dict[tuple[str, str], int], histograms: list[_Histogram]):
        self._commands = commands
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "chatd_commands", "Commands by op and outcome", labels=["op", "outcome"])
        for (op, outcome), n in sorted(self._commands.items()):
            family.add_metric([op, outcome], n)
        yield family
        for histogram in self._histograms:
            yield histogram.family()


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("chatd_connections", "Open WebSocket connections", registry=r)
        self.subscribers = Gauge("chatd_subscribers", "Active subscriptions", registry=r)
        self.lagging = Gauge(
            "chatd_lagging_subscribers",
            "Subscriptions being caught up from the store because they read slowly",
            registry=r,
        )
        self.current_seq = Gauge("chatd_current_seq", "Newest committed seq", registry=r)
        self.events = Counter("chatd_events_committed", "Events committed", registry=r)
        self._commands: dict[tuple[str, str], int] = {}
        self.send_latency = _Histogram(
            "chatd_send_ack_seconds",
            "Time from receiving a send to writing its ok",
            (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.batch_size = _Histogram(
            "chatd_commit_batch_size",
            "Operations per group commit",
            (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.commit_seconds = _Histogram(
            "chatd_commit_seconds",
            "Time of one group commit",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
        )
        r.register(_Hot(  # type: ignore[arg-type]
            self._commands, [self.send_latency, self.batch_size, self.commit_seconds]))
        self.expiry_runs = Counter("chatd_expiry_runs", "Expiry runs", registry=r)
        self.expired = Counter(
            "chatd_expired_rows", "Rows deleted by expiry", ["kind"], registry=r
        )
        self.slow_closed = Counter(
            "chatd_slow_reader_closes", "Connections closed with 4000", registry=r
        )

    def bind(
        self, *, subscribers: Callable[[], int], lagging: Callable[[], int],
        seq: Callable[[], int],
    ) -> None:
        """Gauges read live values when scraped instead of being kept in step."""
        self.subscribers.set_function(subscribers)
        self.lagging.set_function(lagging)
        self.current_seq.set_function(seq)

    def command(self, op: str, outcome: str) -> None:
        """Count one command."""
        key = (op, outcome)
        self._commands[key] = self._commands.get(key, 0) + 1

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
