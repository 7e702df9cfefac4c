"""Prometheus metrics of one daemon, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]


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
        self.commands = Counter(
            "chatd_commands", "Commands by op and outcome", ["op", "outcome"], registry=r
        )
        self._commands: dict[tuple[str, str], Counter] = {}
        self.send_latency = Histogram(
            "chatd_send_ack_seconds",
            "Time from receiving a send to writing its ok",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.batch_size = Histogram(
            "chatd_commit_batch_size",
            "Operations per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "chatd_commit_seconds",
            "Time of one group commit",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
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
        """Count one command; the labelled child is looked up once per (op, outcome)."""
        child = self._commands.get((op, outcome))
        if child is None:
            child = self._commands[(op, outcome)] = self.commands.labels(op, outcome)
        child.inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
