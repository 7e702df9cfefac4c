"""The protocol's machine-readable form, generated from the wire types of :mod:`chatd.wire`.

``python -m chatd.protocol_schema`` writes two files into ``docs/``:

- ``protocol.schema.json``, a JSON Schema (draft 2020-12) with a ``$defs`` entry
  for every command, every server frame and the objects inside them, and the
  unions ``$defs/Command`` (a client→server frame), ``$defs/Reply`` (the reply to
  one command) and ``$defs/ServerFrame`` (a server→client frame). The root
  accepts either direction.
- ``asyncapi.json``, an AsyncAPI 3.0.0 document of the WebSocket endpoint
  ``/ws``, with the same schemas embedded in ``components.schemas``.

``--check`` writes nothing and exits 1 when the shipped files differ from what
the wire types generate now. This is a development tool: the server never
imports it.

What is a command and what is a server frame is read from :mod:`chatd.wire`
itself: the commands are the members of ``wire.AnyCommand``; the server frames
are every Struct defined there that is tagged on ``type``, in definition order.
Several frames may share a tag (every ``Ok`` variant is ``"type": "ok"`` and is
told apart by its fields), which msgspec cannot put in one union; so each Struct
becomes a component of its own and the unions are composed here: frames that
share a tag form an ``anyOf`` (named ``Any`` plus the tag, e.g. ``AnyOk``),
distinct tags a ``oneOf``. A frame is a reply when it has a ``ref`` field. A new
frame type such as ``Ephemeral`` (tagged ``"type": "ephemeral"``) therefore
needs nothing here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, get_args

import msgspec

from . import wire

#: The protocol version that chatd implements (PROTOCOL.md's numbering).
PROTOCOL_VERSION = "1"
SCHEMA_FILE = "protocol.schema.json"
ASYNCAPI_FILE = "asyncapi.json"
DOCS = Path(__file__).resolve().parent.parent / "docs"
REGENERATE = "python -m chatd.protocol_schema"

JSONSCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DEFS = "#/$defs/"
ASYNCAPI_SCHEMAS = "#/components/schemas/"
CHANNEL = "ws"

Schema = dict[str, Any]


def commands() -> list[type[wire.Command]]:
    """The commands a client may send, in the order of ``wire.AnyCommand``."""
    return list(get_args(wire.AnyCommand))


def server_frames() -> list[type[msgspec.Struct]]:
    """Every Struct of :mod:`chatd.wire` tagged on ``type``, in definition order."""
    return [
        obj
        for obj in vars(wire).values()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == wire.__name__
        and obj.__struct_config__.tag_field == "type"
    ]


def tag(struct: type[msgspec.Struct]) -> str:
    return str(struct.__struct_config__.tag)


def is_reply(struct: type[msgspec.Struct]) -> bool:
    """A reply answers one command, so it carries that command's ``ref``."""
    return "ref" in struct.__struct_fields__


def frame_groups() -> dict[str, list[type[msgspec.Struct]]]:
    """The server frames by their ``type`` tag, in order of first appearance."""
    groups: dict[str, list[type[msgspec.Struct]]] = {}
    for struct in server_frames():
        groups.setdefault(tag(struct), []).append(struct)
    return groups


def group_name(tag_value: str, members: list[type[msgspec.Struct]]) -> str:
    """The definition of one tag: the Struct itself, or ``Any<Tag>`` for several."""
    if len(members) == 1:
        return members[0].__name__
    return "Any" + "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", tag_value))


def definitions(prefix: str) -> dict[str, Schema]:
    """Every component schema and the composed unions, with ``$ref`` s under ``prefix``."""
    cmds = commands()
    groups = frame_groups()
    types: list[Any] = [*cmds, *(s for members in groups.values() for s in members)]
    _, defs = msgspec.json.schema_components(types, ref_template=prefix + "{name}")

    def ref(name: str) -> Schema:
        return {"$ref": prefix + name}

    composed: dict[str, Schema] = {
        "Command": {
            "description": "A frame from the client to the server: one command, "
            "told apart by `op`.",
            "oneOf": [ref(c.__name__) for c in cmds],
        },
    }
    group_refs: list[tuple[str, bool]] = []
    for tag_value, members in groups.items():
        name = group_name(tag_value, members)
        if len(members) > 1:
            composed[name] = {
                "description": f'A frame with "type": "{tag_value}". These share the tag and '
                "differ in their fields, so a frame may match more than one of them.",
                "anyOf": [ref(s.__name__) for s in members],
            }
        group_refs.append((name, all(is_reply(s) for s in members)))
    composed["Reply"] = {
        "description": "The reply to one command, told apart by `type`.",
        "oneOf": [ref(name) for name, reply in group_refs if reply],
    }
    composed["ServerFrame"] = {
        "description": "A frame from the server to the client, told apart by `type`.",
        "oneOf": [ref(name) for name, _ in group_refs],
    }
    clash = composed.keys() & defs.keys()
    if clash:
        raise RuntimeError(f"wire.py defines {sorted(clash)}, names the unions need")
    return {**defs, **composed}


def json_schema() -> Schema:
    return {
        "$schema": JSONSCHEMA_DIALECT,
        "title": f"chatd wire protocol, version {PROTOCOL_VERSION}",
        "description": "Every frame of the chatd WebSocket protocol (docs/protocol.md): "
        "$defs/Command for client to server, $defs/ServerFrame for server to client. "
        f"Generated from chatd/wire.py by `{REGENERATE}`; do not edit.",
        "anyOf": [{"$ref": SCHEMA_DEFS + "Command"}, {"$ref": SCHEMA_DEFS + "ServerFrame"}],
        "$defs": definitions(SCHEMA_DEFS),
    }


def _message(struct: type[msgspec.Struct]) -> Schema:
    name = struct.__name__
    message: Schema = {
        "name": name,
        "title": name,
        "contentType": "application/json",
        "payload": {"$ref": ASYNCAPI_SCHEMAS + name},
    }
    field_name = struct.__struct_config__.tag_field
    doc = (struct.__doc__ or "").strip()
    summary = doc.split("\n\n")[0].replace("\n", " ") if doc else ""
    message["summary"] = " ".join([f'"{field_name}": "{tag(struct)}".', summary]).strip()
    return message


def asyncapi() -> Schema:
    cmds = commands()
    frames = server_frames()
    structs: list[type[msgspec.Struct]] = [*cmds, *frames]
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}

    def messages(members: list[type[msgspec.Struct]]) -> list[Schema]:
        return [{"$ref": f"#/channels/{CHANNEL}/messages/{s.__name__}"} for s in members]

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chatd",
            "version": PROTOCOL_VERSION,
            "description": "The WebSocket API of chatd (docs/protocol.md), seen from a client: "
            "it sends commands and receives replies, events and other server frames. "
            "Text frames, one JSON object each. The schemas are those of "
            f"docs/{SCHEMA_FILE}. Generated from chatd/wire.py by `{REGENERATE}`; "
            "do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "localhost": {
                "host": "localhost:8765",
                "protocol": "ws",
                "description": "`chatd serve` with its default address, 127.0.0.1:8765.",
            },
        },
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "The WebSocket endpoint",
                "description": "GET /ws with Upgrade: websocket. Every command gets exactly "
                "one reply, in the order the commands were sent; events interleave.",
                "messages": {s.__name__: {"$ref": f"#/components/messages/{s.__name__}"}
                             for s in structs},
                "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
            },
        },
        "operations": {
            "send": {
                "action": "send",
                "channel": channel_ref,
                "summary": "A command (a frame with `op`).",
                "messages": messages(list(cmds)),
                "reply": {
                    "channel": channel_ref,
                    "messages": messages([f for f in frames if is_reply(f)]),
                },
            },
            "receive": {
                "action": "receive",
                "channel": channel_ref,
                "summary": "A frame from the server (with `type`): a reply, an event, ….",
                "messages": messages(frames),
            },
        },
        "components": {
            "schemas": definitions(ASYNCAPI_SCHEMAS),
            "messages": {s.__name__: _message(s) for s in structs},
        },
    }


def dumps(doc: Schema) -> str:
    """Deterministic text: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """File name in ``docs/`` → its generated text."""
    return {SCHEMA_FILE: dumps(json_schema()), ASYNCAPI_FILE: dumps(asyncapi())}


def stale(docs: Path = DOCS) -> list[str]:
    """The generated files in ``docs`` that are missing or differ from :func:`render`."""
    out = []
    for name, text in render().items():
        path = docs / name
        if not path.is_file() or path.read_bytes() != text.encode():
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chatd.protocol_schema",
        description=f"Write docs/{SCHEMA_FILE} and docs/{ASYNCAPI_FILE} from chatd/wire.py.",
    )
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files are missing or out of date")
    parser.add_argument("--docs", type=Path, default=DOCS, help=f"the folder (default {DOCS})")
    args = parser.parse_args(argv)
    docs: Path = args.docs
    if args.check:
        names = stale(docs)
        for name in names:
            print(f"{docs / name} is out of date with chatd/wire.py; run {REGENERATE}",
                  file=sys.stderr)
        return 1 if names else 0
    for name, text in render().items():
        (docs / name).write_bytes(text.encode())
        print(f"wrote {docs / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
