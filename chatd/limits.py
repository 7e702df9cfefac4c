"""Abuse limits as plain logic with an injected clock: no I/O, no timers.

* :class:`TokenBucket` - a rate with a burst; ``take`` answers how long to wait.
* :class:`Buckets` - one bucket per key (user id, client address, name),
  forgotten once full again so memory follows the active keys only.
* :class:`ConnectionCounter` - open connections in total and per address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # capacity
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens: 0.0 if taken, else the seconds until they would be there."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def wait(self, now: float, n: float = 1.0) -> float:
        """Like :meth:`take` without taking: seconds until ``n`` tokens are there."""
        self._refill(now)
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class Buckets:
    """Token buckets by key; a bucket that has refilled completely is dropped."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, n: float = 1.0) -> float:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self.prune()
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        return bucket.take(now, n)

    def wait(self, key: str, n: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(self.clock(), n)

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def prune(self) -> None:
        now = self.clock()
        for key in [k for k, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionCounter:
    """Open connections, in total and per client address; 0 means no limit."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._by_address: dict[str, int] = {}

    def refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` would be refused, or None."""
        if self.max_total and self.total >= self.max_total:
            return "too many connections"
        if self.max_per_address and self._by_address.get(address, 0) >= self.max_per_address:
            return "too many connections from this address"
        return None

    def add(self, address: str) -> str | None:
        """Count a connection in; returns the refusal instead if it is over a limit."""
        why = self.refusal(address)
        if why is None:
            self.total += 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
        return why

    def remove(self, address: str) -> None:
        self.total -= 1
        left = self._by_address.get(address, 0) - 1
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)
