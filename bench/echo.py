"""``python -m bench.echo``: the transport floor for S1.

A ``websockets`` server that answers every command with an ``ok`` shaped like
chatd's reply to ``send`` (same fields, same size), and does nothing else: no
validation, no storage, no fanout. S1's load against it shows what the
WebSocket library, the event loop and the kernel cost per acknowledged send on
this machine, which chatd cannot go below. Prints the same "serving on" line
as chatd, so :class:`bench.daemon.Daemon` can start it.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
from websockets.asyncio.server import ServerConnection, serve


class _Command(msgspec.Struct):
    ref: object = None
    body: str = ""


_decode = msgspec.json.Decoder(_Command).decode
_encode = msgspec.json.Encoder().encode
_SENDER = {"id": "U" + "u" * 20, "name": "bench"}
_CHANNEL = {"id": "C" + "c" * 20, "name": "bench"}


async def _handler(ws: ServerConnection) -> None:
    seq = 0
    async for data in ws:
        cmd = _decode(data)
        seq += 1
        await ws.send(_encode({
            "type": "ok", "ref": cmd.ref,
            "message": {"id": "M" + "m" * 20, "seq": seq, "at": "2026-01-01T00:00:00.000Z",
                        "sender": _SENDER, "body": cmd.body},
            "channel": _CHANNEL,
        }).decode())


async def _main() -> None:
    async with serve(_handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"bench.echo serving on ws://127.0.0.1:{port}/ws", file=sys.stderr, flush=True)
        await server.serve_forever()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())


if __name__ == "__main__":
    main()
