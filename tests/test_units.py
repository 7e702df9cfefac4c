"""Unit tests of the pure modules: config parsing, validation, wire codecs, limits, crypto."""

from __future__ import annotations

import random

import msgspec
import pytest

from chatd import crypto, validate, wire
from chatd.config import parse_duration, parse_size
from chatd.exceptions import BadRequest, TooLarge, error_from_code
from chatd.limits import Buckets, ConnectionCounter, TokenBucket


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1", 1.0), ("0.25", 0.25), (".5", 0.5), ("30s", 30.0), ("10m", 600.0), ("2h", 7200.0),
     ("90d", 90 * 86400.0), (" 1.5d ", 1.5 * 86400.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1", "1w", "1 2", "abc"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_size() -> None:
    assert parse_size("65536") == 65536
    assert parse_size("64KiB") == 65536
    assert parse_size("1MiB") == 1 << 20
    with pytest.raises(ValueError):
        parse_size("lots")


def test_name_normalisation_and_key() -> None:
    shown, key = validate.name("name", "  Cafe\u0301  ")
    assert shown == "Café"  # NFC, trimmed
    assert key == validate.name("name", "CAFÉ")[1]
    assert validate.name("name", "ﬀ")[1] == validate.name("name", "ff")[1]  # NFKC + casefold
    assert validate.name("name", "👨‍👩‍👧")[0] == "👨‍👩‍👧"  # ZWJ allowed


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "a\x00b", "tab\there", "line\u2028sep", "evil\u202egpj.exe", "zero\u200bwidth"],
)
def test_name_rejects_empty_and_control(bad: str) -> None:
    with pytest.raises(BadRequest, match="name"):
        validate.name("name", bad)


def test_name_too_long_counts_code_points() -> None:
    assert validate.name("name", "é" * 64)[0] == "é" * 64
    with pytest.raises(TooLarge) as info:
        validate.name("name", "x" * 65)
    assert info.value.limit == 64


def test_body_rules() -> None:
    assert validate.body("x" * 4096) == "x" * 4096
    with pytest.raises(TooLarge) as info:
        validate.body("x" * 4097)
    assert info.value.limit == 4096
    with pytest.raises(BadRequest, match="body"):
        validate.body("")
    with pytest.raises(BadRequest, match="body"):
        validate.body("\ud800")


def test_command_decoding_names_the_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.limit"):
        wire.command_decoder.decode(b'{"op":"history","channel":"C1","limit":501}')
    with pytest.raises(msgspec.ValidationError, match=r"\$\.ref"):
        wire.command_decoder.decode(b'{"op":"ping","ref":true}')
    with pytest.raises(msgspec.ValidationError, match=r"\$\.op"):
        wire.command_decoder.decode(b'{"op":"nope"}')
    cmd = wire.command_decoder.decode(b'{"op":"send","channel":"C1","body":"hi","extra":1}')
    assert cmd == wire.Send(channel="C1", body="hi")


def test_error_frame_always_has_ref() -> None:
    frame = msgspec.json.decode(wire.encode(wire.Error(None, "bad_request", "x")))
    assert frame == {"type": "error", "ref": None, "code": "bad_request", "message": "x"}


def test_event_omits_absent_fields() -> None:
    ev = wire.Event(3, "2026-01-01T00:00:00.000Z", "message.deleted", wire.Channel("C1", "g"),
                    message=wire.EventMessage("M1"))
    assert msgspec.json.decode(wire.encode(ev)) == {
        "type": "event", "seq": 3, "at": "2026-01-01T00:00:00.000Z", "kind": "message.deleted",
        "channel": {"id": "C1", "name": "g", "kind": "public"}, "message": {"id": "M1"},
    }


def test_at_format_round_trip() -> None:
    assert wire.format_at(1795000994123) == "2026-11-18T11:23:14.123Z"
    assert wire.parse_at(wire.format_at(1795000994123)) == 1795000994123


def test_token_bucket() -> None:
    b = TokenBucket.full(rate=10, burst=2, now=0.0)
    assert b.take(0.0) == 0 and b.take(0.0) == 0
    assert b.take(0.0) == pytest.approx(0.1)
    assert b.take(0.1) == 0  # refilled one token


def test_buckets_forget_full_ones() -> None:
    now = [0.0]
    buckets = Buckets(rate=1, burst=1, clock=lambda: now[0])
    assert buckets.take("a") == 0
    assert buckets.wait("a") == pytest.approx(1.0)
    now[0] = 5.0
    buckets.prune()
    assert len(buckets) == 0


def test_connection_counter() -> None:
    c = ConnectionCounter(max_total=3, max_per_address=2)
    assert c.add("a") is None and c.add("a") is None
    assert c.add("a") == "too many connections from this address"
    assert c.add("b") is None
    assert c.add("c") == "too many connections"
    c.remove("a")
    assert c.add("c") is None


def test_passwords_and_tokens() -> None:
    stored = crypto.hash_password("hunter2", n=1024)
    assert stored.startswith("scrypt$1024$8$1$")
    assert crypto.verify_password("hunter2", stored)
    assert not crypto.verify_password("hunter3", stored)
    assert not crypto.verify_password("x", "garbage")
    token = crypto.new_token()
    assert len(token) >= 43 and crypto.token_hash(token) != token.encode()
    ident = crypto.new_id("C")
    assert ident[0] == "C" and len(ident) == 21


def test_ordered_ids_sort_by_their_number() -> None:
    numbers = [0, 1, 2, 31, 32, 1_000, 2**32, 2**53, 2**63 - 1]
    rng = random.Random(1)
    ids = [crypto.new_ordered_id("M", n, rng) for n in numbers]
    assert ids == sorted(ids)
    assert all(i[0] == "M" and len(i) == 21 for i in ids)
    assert all(c in "0123456789abcdefghijklmnopqrstuv" for i in ids for c in i[1:])
    # The random tail keeps ids of the same number apart.
    assert len({crypto.new_ordered_id("M", 7, rng) for _ in range(100)}) == 100


def test_error_from_code() -> None:
    err = error_from_code("too_large", "body: too long", limit=4096)
    assert isinstance(err, TooLarge) and err.limit == 4096
