"""The periodic expiry coroutine: old messages, idle channels, old events.

Expiry goes through the writer like any other state change, so its deletion
events get seqs from the same counter and reach subscribers the same way. Each
round is bounded (``Config.expire_batch`` rows) so a large backlog never holds
the write transaction for long; rounds repeat until nothing is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .config import Config
from .metrics import Metrics
from .ops import Expired, ExpireOp
from .writer import Writer

log = logging.getLogger("chatd.expiry")


def cutoffs(config: Config, now: float, limit: int) -> ExpireOp:
    def before(ttl: float) -> int:
        return int((now - ttl) * 1000)

    return ExpireOp(
        message_before_ms=before(config.message_ttl),
        channel_idle_before_ms=before(config.channel_ttl),
        event_before_ms=before(config.event_ttl),
        nonce_before_ms=before(max(config.nonce_ttl, 86400.0)),
        token_before_ms=int(now * 1000),
        limit=limit,
    )


async def expire_once(
    config: Config, writer: Writer, clock: Callable[[], float], metrics: Metrics
) -> Expired:
    """Run rounds until the backlog is gone; the totals of this run."""
    total = Expired()
    while True:
        done: Expired = await writer.submit(cutoffs(config, clock(), config.expire_batch))
        total = Expired(
            total.messages + done.messages,
            total.channels + done.channels,
            total.events + done.events,
            done.horizon,
        )
        if not done.more:
            break
        await asyncio.sleep(0)  # let other writes in between rounds
    metrics.expiry_runs.inc()
    for kind, n in (("messages", total.messages), ("channels", total.channels),
                    ("events", total.events)):
        if n:
            metrics.expired.labels(kind).inc(n)
    log.info(
        "expiry: %d messages, %d channels, %d events deleted; horizon %d",
        total.messages, total.channels, total.events, total.horizon,
        extra={"event": "expiry", "messages": total.messages, "channels": total.channels,
               "events": total.events, "horizon": total.horizon},
    )
    return total


async def run_expiry(
    config: Config, writer: Writer, clock: Callable[[], float], metrics: Metrics
) -> None:
    while True:
        await asyncio.sleep(config.expire_interval)
        try:
            await expire_once(config, writer, clock, metrics)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("expiry run failed; retrying next interval")
