"""What lands in the sqlite file, read directly (schema-agnostic where possible)."""

from __future__ import annotations

from .helpers import (
    client,
    server_log_guard,  # noqa: F401  (autouse: no traceback in the daemon log)
)
from .sqlite_file import db_bytes, db_rows
from .support import WS


async def test_passwords_and_tokens_never_stored_in_clear(daemon):
    password = "pw-Zq8vX1-unique-password"
    async with WS.connect(daemon.url) as ws:
        r = await ws.ok("login", name="alice", password=password)
        token = r["token"]
    async with client(daemon.url, token=token) as ws:
        await ws.ok("create_channel", name="general")
        await ws.ok("logout")
    async with WS.connect(daemon.url) as ws:
        token2 = (await ws.ok("login", name="alice", password=password))["token"]
    raw = await db_bytes(daemon.db)
    for secret in (password, token, token2):
        for enc in (secret.encode(), secret.encode("utf-16-le")):
            assert enc not in raw, f"{secret!r} is stored in clear"
    rows = await db_rows(daemon.db)
    assert not [r for r in rows if any(v in (password, token, token2) for v in r[1])]
    # the SIGKILLed file too
    await daemon.kill()
    raw = await db_bytes(daemon.db)
    assert password.encode() not in raw and token2.encode() not in raw


async def test_deleted_body_not_in_any_table(daemon):
    secret = "deleted-body-Yk3p9-secret"
    channel_secret = "chan-body-Hh27-secret"
    async with client(daemon.url, "alice") as ws:
        ch = (await ws.ok("create_channel", name="general"))["channel"]["id"]
        other = (await ws.ok("create_channel", name="other"))["channel"]["id"]
        m = (await ws.ok("send", channel=ch, body=secret, nonce="nonce-1"))["message"]["id"]
        await ws.ok("send", channel=other, body=channel_secret)
        await ws.ok("send", channel=ch, body="kept body")
        await ws.ok("delete_message", message=m)
        await ws.ok("delete_channel", channel=other)
    rows = await db_rows(daemon.db)

    def mentions(needle: str) -> list:
        return [(t, r) for t, r in rows
                if any(needle in (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
                       for v in r)]

    assert mentions("kept body"), "the check can see stored bodies"
    assert not mentions(secret), mentions(secret)
    assert not mentions(channel_secret), mentions(channel_secret)


async def test_schema_version_recorded(daemon):
    async with client(daemon.url, "alice") as ws:
        await ws.ok("ping")
    rows = await db_rows(daemon.db)
    meta = {r[0]: r[1] for t, r in rows if t == "meta"}
    assert meta.get("schema_version") not in (None, ""), meta
    assert meta.get("epoch"), meta
