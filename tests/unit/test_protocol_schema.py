"""The machine-readable protocol (docs/protocol.schema.json, docs/asyncapi.json):
current with chatd/wire.py, and every example frame of docs/protocol.md valid
against it and decodable into the wire types."""

from __future__ import annotations

import json
import re
import typing
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from chatd import connection, protocol_schema, wire

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
PROTOCOL_MD = DOCS / "protocol.md"

#: The ok reply of each command (the server's handlers return these, see
#: test_replies_match_the_handlers; subscribe writes its SubscribeOk itself).
REPLIES: dict[type[wire.Command], type[wire.Ok]] = {
    wire.Login: wire.LoginOk,
    wire.Auth: wire.AuthOk,
    wire.Logout: wire.Ok,
    wire.Ping: wire.Ok,
    wire.Boot: wire.BootOk,
    wire.CreateChannel: wire.ChannelOk,
    wire.DeleteChannel: wire.ChannelOk,
    wire.OpenDm: wire.OpenDmOk,
    wire.AddMember: wire.MemberOk,
    wire.RemoveMember: wire.MemberOk,
    wire.Members: wire.MembersOk,
    wire.MarkRead: wire.MarkReadOk,
    wire.Send: wire.SendOk,
    wire.DeleteMessage: wire.DeleteMessageOk,
    wire.EditMessage: wire.SendOk,
    wire.History: wire.HistoryOk,
    wire.Search: wire.SearchOk,
    wire.Subscribe: wire.SubscribeOk,
    wire.Unsubscribe: wire.Ok,
    wire.ChangePassword: wire.Ok,
    wire.Users: wire.UsersOk,
    wire.CreateInvite: wire.InviteOk,
    wire.ListInvites: wire.InvitesOk,
    wire.RevokeInvite: wire.Ok,
    wire.SetRole: wire.AccountOk,
    wire.DeactivateUser: wire.AccountOk,
    wire.ReactivateUser: wire.AccountOk,
    wire.Typing: wire.Ok,
}
OK_TYPES: list[type[wire.Ok]] = [s for s in protocol_schema.server_frames()
                                 if issubclass(s, wire.Ok)]
FRAME_TYPES: dict[str, list[type[msgspec.Struct]]] = {
    "event": [wire.Event], "error": [wire.Error],
    "ephemeral": [wire.EphemeralTyping, wire.EphemeralPresence]}

# ------------------------------------------------------------------ the files


def _shipped(name: str) -> Any:
    return json.loads((DOCS / name).read_text(encoding="utf-8"))


def test_shipped_files_are_current() -> None:
    for name, text in protocol_schema.render().items():
        path = DOCS / name
        assert path.is_file(), f"docs/{name} is missing: run python -m chatd.protocol_schema"
        assert path.read_text(encoding="utf-8") == text, (
            f"docs/{name} is stale (chatd/wire.py changed): run python -m chatd.protocol_schema"
        )


def test_check_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert protocol_schema.main(["--check"]) == 0
    assert protocol_schema.main(["--docs", str(tmp_path)]) == 0
    assert protocol_schema.main(["--check", "--docs", str(tmp_path)]) == 0
    schema = tmp_path / protocol_schema.SCHEMA_FILE
    schema.write_text(schema.read_text().replace('"maxLength": 64', '"maxLength": 65'))
    (tmp_path / protocol_schema.ASYNCAPI_FILE).unlink()
    capsys.readouterr()
    assert protocol_schema.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{protocol_schema.SCHEMA_FILE} is out of date" in err
    assert f"{protocol_schema.ASYNCAPI_FILE} is out of date" in err
    assert "run python -m chatd.protocol_schema" in err


def test_json_schema_is_valid_draft_2020_12() -> None:
    schema = _shipped(protocol_schema.SCHEMA_FILE)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    defs = schema["$defs"]
    names = {s.__name__ for s in [*protocol_schema.commands(), *protocol_schema.server_frames()]}
    assert names <= defs.keys()
    assert {"Command", "Reply", "ServerFrame", "User", "Channel", "Message"} <= defs.keys()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize("name", [protocol_schema.SCHEMA_FILE, protocol_schema.ASYNCAPI_FILE])
def test_every_ref_resolves(name: str) -> None:
    doc = _shipped(name)
    refs = _refs(doc)
    assert len(refs) > 30
    for ref in refs:
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{name}: {ref} does not resolve"
            node = node[part]


def test_asyncapi_document() -> None:
    doc = _shipped(protocol_schema.ASYNCAPI_FILE)
    assert doc["asyncapi"] == "3.0.0"
    server = doc["servers"]["localhost"]
    assert (server["host"], server["protocol"]) == ("localhost:8765", "ws")
    (channel,) = doc["channels"].values()
    assert channel["address"] == "/ws"
    ops = doc["operations"]
    assert {k: v["action"] for k, v in ops.items()} == {"send": "send", "receive": "receive"}

    def names(refs: list[dict[str, str]]) -> list[str]:
        return [r["$ref"].rsplit("/", 1)[1] for r in refs]

    assert names(ops["send"]["messages"]) == [c.__name__ for c in protocol_schema.commands()]
    assert names(ops["receive"]["messages"]) == [
        s.__name__ for s in protocol_schema.server_frames()]
    assert names(ops["send"]["reply"]["messages"]) == ["Error", *(s.__name__ for s in OK_TYPES)]
    # The embedded schemas are the JSON Schema's $defs, only referred to from elsewhere.
    defs = json.dumps(_shipped(protocol_schema.SCHEMA_FILE)["$defs"], sort_keys=True)
    assert json.dumps(doc["components"]["schemas"], sort_keys=True) == defs.replace(
        "#/$defs/", "#/components/schemas/")


def test_unions_follow_wire_py() -> None:
    """Every command of wire.py is in AnyCommand; several frames of one type are a union."""
    tagged_op = [obj for obj in vars(wire).values()
                 if isinstance(obj, type) and issubclass(obj, wire.Command)
                 and obj is not wire.Command]
    assert tagged_op == protocol_schema.commands()

    defs = protocol_schema.json_schema()["$defs"]
    assert defs["AnyEphemeral"]["anyOf"] == [{"$ref": "#/$defs/EphemeralTyping"},
                                             {"$ref": "#/$defs/EphemeralPresence"}]
    assert {"$ref": "#/$defs/AnyEphemeral"} in defs["ServerFrame"]["oneOf"]
    assert {"$ref": "#/$defs/AnyEphemeral"} not in defs["Reply"]["oneOf"]
    frame = {"type": "ephemeral", "kind": "presence", "user": {"id": "U1", "name": "a"},
             "online": True}
    Draft202012Validator({**protocol_schema.json_schema(), "$ref": "#/$defs/ServerFrame"}
                         ).validate(frame)


def test_server_does_not_import_the_generator() -> None:
    for path in (ROOT / "chatd").glob("*.py"):
        if path.name != "protocol_schema.py":
            assert "protocol_schema" not in path.read_text(encoding="utf-8"), path


def test_replies_match_the_handlers() -> None:
    assert set(REPLIES) == set(protocol_schema.commands())
    assert set(REPLIES.values()) == set(OK_TYPES)
    for cmd, handler in connection._HANDLERS.items():
        returns = typing.get_type_hints(handler)["return"]
        if cmd is wire.Subscribe:
            assert returns is type(None)  # it writes its SubscribeOk itself
        else:
            assert returns is REPLIES[cmd], cmd


# ------------------------------------------------------- docs/protocol.md


@dataclass
class Example:
    """One frame shown in docs/protocol.md."""

    line: int  # 1-based
    arrow: str  # "→" sent by the client, "←" by the server, "" unmarked
    text: str  # the JSON text, or the line's text when it is not a JSON object
    obj: dict[str, Any] | None  # None: not a JSON object ("not json", "{…}" shortened)
    block: int  # which fenced block; -1 for an inline `code span`
    reply: Example | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"docs/protocol.md:{self.line}: {self.text[:100]}"

    @property
    def type(self) -> str | None:
        """The ``type`` of a server frame, also of one shortened with ``…``."""
        if self.obj is not None:
            return self.obj.get("type")
        m = re.search(r'"type"\s*:\s*"(\w+)"', self.text)
        return m.group(1) if m else None


_ARROW = re.compile(r"\s*([→←])?\s*(.*)")
_INLINE = re.compile(r"`(\{[^`]*\})`")


def extract(markdown: str) -> tuple[list[Example], list[Example]]:
    """Every frame in the doc's fenced blocks (``→``/``←`` lines and lines that start
    with ``{``, possibly spanning lines) and inline code spans; then the skipped ones."""
    decoder = json.JSONDecoder()
    found: list[Example] = []
    skipped: list[Example] = []
    lines = markdown.splitlines()
    block, fence_end = -1, -1
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            if i > fence_end:  # an opening fence: find its end
                block += 1
                fence_end = next((j for j in range(i + 1, len(lines))
                                  if lines[j].lstrip().startswith("```")), len(lines))
            i += 1
            continue
        if i > fence_end:  # prose: inline code spans
            for m in _INLINE.finditer(line):
                try:
                    obj = json.loads(m.group(1))
                except json.JSONDecodeError:
                    skipped.append(Example(i + 1, "", m.group(1), None, -1))
                    continue
                ex = Example(i + 1, "", m.group(1), obj, -1)
                (found if "op" in obj or "type" in obj else skipped).append(ex)
            i += 1
            continue
        arrow, rest = _ARROW.fullmatch(line).groups()  # type: ignore[union-attr]
        arrow = arrow or ""
        if not rest.startswith("{"):
            if arrow:  # a frame that is not a JSON object: `→ not json`, `→ [1,2]`
                found.append(Example(i + 1, arrow, rest, None, block))
            i += 1
            continue
        tail = "\n".join([rest, *lines[i + 1 : fence_end]])
        try:
            obj, end = decoder.raw_decode(tail)
        except json.JSONDecodeError:
            ex = Example(i + 1, arrow, rest, None, block)  # shortened with "…"
            (found if arrow else skipped).append(ex)
            i += 1
            continue
        ex = Example(i + 1, arrow, tail[:end], obj, block)
        (found if arrow or "op" in obj or "type" in obj else skipped).append(ex)
        i += tail[:end].count("\n") + 1
    _pair(found)
    return found, skipped


def _pair(examples: list[Example]) -> None:
    """Give each command in a block the ok or error after it (replies come in order)."""
    pending: deque[Example] = deque()
    block = None
    for ex in examples:
        if ex.block != block:
            pending.clear()
            block = ex.block
        if ex.arrow == "→":
            pending.append(ex)
        elif ex.arrow == "←" and ex.type in ("ok", "error") and pending:
            pending.popleft().reply = ex


@cache
def _validator(definition: str) -> Draft202012Validator:
    schema = _shipped(protocol_schema.SCHEMA_FILE)
    return Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                 "$ref": f"#/$defs/{definition}"})


def _errors(definition: str, obj: Any) -> list[str]:
    return [e.message for e in _validator(definition).iter_errors(obj)]


def _round_trips(raw: str, struct: type[msgspec.Struct]) -> bool:
    """``raw`` decodes as ``struct`` and encodes back to the same bytes (to the same
    JSON value when ``raw`` is laid out over several lines)."""
    try:
        value = msgspec.json.decode(raw, type=struct)
    except msgspec.ValidationError:
        return False
    if "\n" in raw:
        return bool(json.loads(wire.encode(value)) == json.loads(raw))
    return wire.encode(value) == raw.encode()


_EXAMPLES, _SKIPPED = extract(PROTOCOL_MD.read_text(encoding="utf-8"))


def test_extract() -> None:
    markdown = """Send `{"op": "ping", "ref": 1}`, or `{"op": NAME}`.

```
→ {"op": "ping", "ref": "a"}   (a comment)
→ not json
← {"type":"ok","ref":"a"}
← {"type":"error","ref":null,"code":"bad_request","message":"frame: …"}
← {"type":"ok","ref":"b","user":{…}}
```

```json
{"type": "event", "seq": 1,
 "channel": {"id": "C1", "name": "general"}}
{"status": "not a frame"}
```
"""
    found, skipped = extract(markdown)
    assert [(ex.line, ex.arrow, ex.obj is not None, ex.block) for ex in found] == [
        (1, "", True, -1), (4, "→", True, 0), (5, "→", False, 0), (6, "←", True, 0),
        (7, "←", True, 0), (8, "←", False, 0), (12, "", True, 1)]
    assert found[6].obj == {"type": "event", "seq": 1,
                            "channel": {"id": "C1", "name": "general"}}
    assert [ex.text for ex in skipped] == ['{"op": NAME}', '{"status": "not a frame"}']
    assert found[1].reply is found[3] and found[2].reply is found[4]
    assert found[0].reply is None


def test_examples_were_found() -> None:
    frames = [ex for ex in _EXAMPLES if ex.obj is not None]
    commands = [ex for ex in frames if "op" in ex.obj]  # type: ignore[operator]
    server = [ex for ex in frames if "type" in ex.obj]  # type: ignore[operator]
    assert len(frames) >= 100, len(frames)
    assert len(commands) >= 30 and len(server) >= 60, (len(commands), len(server))
    # Few frames are not JSON: placeholders ({"op": NAME, …}) and shortened ones ({…}).
    shortened = [ex.where for ex in [*_EXAMPLES, *_SKIPPED]
                 if ex.obj is None and re.search(r'"(op|type)"', ex.text)]
    assert len(shortened) <= 8, shortened
    # The doc shows every command, every ok reply and every event kind.
    ops = {ex.obj["op"] for ex in commands}  # type: ignore[index]
    assert ops >= {str(c.__struct_config__.tag) for c in protocol_schema.commands()}
    kinds = {ex.obj["kind"] for ex in server if ex.type == "event"}  # type: ignore[index]
    assert kinds == set(typing.get_args(wire.EventKind))
    paired = {REPLIES[type(wire.command_decoder.decode(ex.text))]
              for ex in commands if ex.reply is not None and ex.reply.type == "ok"}
    assert paired == set(OK_TYPES)


def test_arrows_match_the_direction() -> None:
    for ex in _EXAMPLES:
        if ex.obj is not None and ex.arrow:
            assert ("op" in ex.obj) == (ex.arrow == "→"), ex.where
            assert ("type" in ex.obj) == (ex.arrow == "←"), ex.where


@pytest.mark.parametrize(
    "ex", [ex for ex in _EXAMPLES if ex.obj is not None and "op" in ex.obj],
    ids=lambda ex: f"line{ex.line}",
)
def test_command_example(ex: Example) -> None:
    """A command validates and decodes, unless the doc shows it refused as invalid:
    then the schema and the decoder refuse it too, and with the doc's message."""
    reply = ex.reply
    message = ""
    if reply is not None and reply.obj is not None and reply.type == "error":
        message = reply.obj["message"]
    if reply is not None and reply.obj is not None:
        assert reply.type == "ok" or "code" in reply.obj, reply.where
    if message.startswith("invalid command: "):
        assert _errors("Command", ex.obj), f"{ex.where}: the schema accepts it"
        with pytest.raises(msgspec.ValidationError) as info:
            wire.command_decoder.decode(ex.text)
        assert str(info.value) == message.removeprefix("invalid command: "), ex.where
        return
    if message.startswith("frame: not valid JSON text: "):
        # Not JSON to msgspec (a lone surrogate), which a schema cannot express.
        with pytest.raises(msgspec.DecodeError) as dinfo:
            wire.command_decoder.decode(ex.text)
        assert str(dinfo.value) == message.removeprefix("frame: not valid JSON text: ")
        return
    assert not _errors("Command", ex.obj), (ex.where, _errors("Command", ex.obj))
    cmd = wire.command_decoder.decode(ex.text)
    assert cmd.__struct_config__.tag == ex.obj["op"], ex.where  # type: ignore[index]
    if reply is not None and reply.obj is not None:
        assert reply.obj["ref"] == cmd.ref, f"{reply.where} does not answer {ex.where}"
        if reply.type == "ok":
            ok_type = REPLIES[type(cmd)].__name__
            assert not _errors(ok_type, reply.obj), (reply.where, _errors(ok_type, reply.obj))
            assert _round_trips(reply.text, REPLIES[type(cmd)]), (
                f"{reply.where} is not a {ok_type} as chatd writes it")


@pytest.mark.parametrize(
    "ex", [ex for ex in _EXAMPLES if ex.obj is not None and "type" in ex.obj],
    ids=lambda ex: f"line{ex.line}",
)
def test_server_frame_example(ex: Example) -> None:
    """A server frame validates, and is exactly what chatd writes for some wire type."""
    assert not _errors("ServerFrame", ex.obj), (ex.where, _errors("ServerFrame", ex.obj))
    if ex.type in ("ok", "error"):
        assert not _errors("Reply", ex.obj), ex.where
    if ex.type == "ok":
        assert any(_round_trips(ex.text, t) for t in OK_TYPES), (
            f"{ex.where} is not an ok reply as chatd writes it")
    else:
        types = FRAME_TYPES[ex.type]  # type: ignore[index]
        assert any(_round_trips(ex.text, t) for t in types), (
            f"{ex.where} is not an {ex.type} frame as chatd writes it")
