"""The hub's choice of recipients by audience (PROTOCOL.md "Who sees what"):
exact per user in public, restricted and mixed batches, and the cost of a
restricted event independent of the connections that may not see it."""

from __future__ import annotations

import json
from typing import Any

from chatd.fanout import Hub
from chatd.ops import EventPage, Published


class CountingSink:
    """A sink that keeps the seqs written to it and counts how often it was asked."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.asked = 0
        self.open = True

    def write(self, frames: bytes) -> None:
        data = frames
        while data:
            n = data[1] & 0x7F
            start = 2
            if n == 126:
                n, start = int.from_bytes(data[2:4], "big"), 4
            self.seqs.append(json.loads(data[start:start + n])["seq"])
            data = data[start + n:]

    def send(self, payload: bytes) -> None:  # pragma: no cover - not used here
        raise AssertionError("no replies in these tests")

    def buffered(self) -> int:
        self.asked += 1
        return 0

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        self.open = False


async def _nothing(after: int, channels: Any, limit: int, user_id: str) -> EventPage:
    return EventPage([], after, 0)


def _event(seq: int, channel: str, audience: set[str] | None) -> Published:
    frame = json.dumps({"type": "event", "seq": seq, "channel": {"id": channel}}).encode()
    return Published(seq, channel, frame, None if audience is None else frozenset(audience))


async def test_each_user_gets_its_events_of_a_mixed_batch() -> None:
    hub = Hub(0, _nothing)
    sinks = {u: CountingSink() for u in ("a", "b", "c")}
    second_a = CountingSink()
    for u, sink in sinks.items():
        hub.subscribe(sink, None, None, u)
    hub.subscribe(second_a, None, None, "a")
    filtered = CountingSink()
    hub.subscribe(filtered, frozenset({"Cpriv"}), None, "b")
    hub.publish([
        _event(1, "Cpub", None),
        _event(2, "Cpriv", {"a", "b"}),
        _event(3, "Cdm", {"b", "c"}),
        _event(4, "Cpub", None),
        _event(5, "Cpriv", {"a"}),
    ])
    assert sinks["a"].seqs == [1, 2, 4, 5] and second_a.seqs == [1, 2, 4, 5]
    assert sinks["b"].seqs == [1, 2, 3, 4]
    assert sinks["c"].seqs == [1, 3, 4]
    assert filtered.seqs == [2]
    hub.publish([_event(6, "Cpub", None)])
    assert [s.seqs[-1] for s in sinks.values()] == [6, 6, 6]


async def test_a_restricted_batch_never_touches_the_others() -> None:
    hub = Hub(0, _nothing)
    members = {u: CountingSink() for u in ("m1", "m2")}
    others = [CountingSink() for _ in range(500)]
    for u, sink in members.items():
        hub.subscribe(sink, None, None, u)
    for i, sink in enumerate(others):
        hub.subscribe(sink, None, None, f"u{i}")
    hub.publish([_event(1, "Cpriv", {"m1", "m2"}), _event(2, "Cpriv", {"m1", "m2"})])
    assert members["m1"].seqs == [1, 2] and members["m2"].seqs == [1, 2]
    assert all(s.asked == 0 and s.seqs == [] for s in others), (
        "a private channel's event must cost nothing per connection that may not see it")
    # A later public event still reaches everyone once, in order.
    hub.publish([_event(3, "Cpub", None)])
    assert all(s.seqs == [3] for s in others)
    assert members["m1"].seqs == [1, 2, 3]


async def test_an_unsubscribed_user_leaves_the_index() -> None:
    hub = Hub(0, _nothing)
    sink = CountingSink()
    sub = hub.subscribe(sink, None, None, "a")
    hub.unsubscribe(sub)
    hub.publish([_event(1, "Cpriv", {"a"})])
    assert sink.seqs == [] and hub._by_user == {}
