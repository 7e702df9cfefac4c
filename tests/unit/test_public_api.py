"""The public API of the ``chatd`` package: what ``__all__`` promises, that each
name resolves to the object of its home module, that the error classes carry
PROTOCOL.md's codes, and that ``import chatd`` alone stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import chatd
from chatd import exceptions, wire

# Where each public name is defined: chatd re-exports it from there.
HOMES = {
    "chatd.client": ["Client", "Reset", "StreamPosition", "backoff"],
    "chatd.exceptions": [
        "ChatdError", "ProtocolError", "BadRequest", "Unauthorized", "Forbidden", "NotFound",
        "Conflict", "TooLarge", "RateLimited", "ResumeGap", "Unavailable", "InternalError",
        "StartupError", "ClientError", "ClientClosed", "CommandTimeout", "ConnectFailed",
        "ConnectionLost",
    ],
    "chatd.wire": [
        "User", "Channel", "Message", "Event", "Ok", "LoginOk", "AuthOk", "BootOk", "ChannelOk",
        "SendOk", "DeleteMessageOk", "HistoryOk", "SubscribeOk",
        "BootChannel", "OpenDmOk", "MemberOk", "MembersOk", "MarkReadOk",
    ],
}
EXPECTED_ALL = sorted(["__version__", "wire", *(n for names in HOMES.values() for n in names)])

# The "Error codes" table of PROTOCOL.md, and the class each code raises.
PROTOCOL_CODES = {
    "bad_request": exceptions.BadRequest,
    "unauthorized": exceptions.Unauthorized,
    "forbidden": exceptions.Forbidden,
    "not_found": exceptions.NotFound,
    "conflict": exceptions.Conflict,
    "too_large": exceptions.TooLarge,
    "rate_limited": exceptions.RateLimited,
    "resume_gap": exceptions.ResumeGap,
    "unavailable": exceptions.Unavailable,
    "internal": exceptions.InternalError,
}

# Errors that are not error frames: no code of their own.
NOT_PROTOCOL = {
    exceptions.ChatdError,
    exceptions.StartupError,
    exceptions.ClientError,
    exceptions.ClientClosed,
    exceptions.CommandTimeout,
    exceptions.ConnectFailed,
    exceptions.ConnectionLost,
}


def test_all_is_the_documented_list() -> None:
    assert chatd.__all__ == EXPECTED_ALL


@pytest.mark.parametrize(("home", "name"), [(h, n) for h, ns in HOMES.items() for n in ns])
def test_every_name_is_its_home_object(home: str, name: str) -> None:
    assert getattr(chatd, name) is getattr(importlib.import_module(home), name)
    assert name in dir(chatd)


def test_version_and_wire() -> None:
    assert isinstance(chatd.__version__, str) and chatd.__version__
    assert chatd.wire is wire


def test_star_import_and_unknown_names() -> None:
    namespace: dict[str, object] = {}
    exec("from chatd import *", namespace)
    assert set(EXPECTED_ALL) <= set(namespace)
    assert namespace["wire"] is wire
    with pytest.raises(AttributeError):
        _ = chatd.NoSuchName  # type: ignore[attr-defined]


def test_exported_exceptions_carry_the_protocol_codes() -> None:
    exported = {
        obj
        for obj in (getattr(chatd, n) for n in EXPECTED_ALL)
        if isinstance(obj, type) and issubclass(obj, exceptions.ChatdError)
    }
    protocol = {cls for cls in exported if issubclass(cls, exceptions.ProtocolError)}
    assert protocol - {exceptions.ProtocolError} == set(PROTOCOL_CODES.values())
    assert exported - protocol == NOT_PROTOCOL
    for code, cls in PROTOCOL_CODES.items():
        assert cls.code == code
        assert exceptions.ERRORS_BY_CODE[code] is cls
        assert type(exceptions.error_from_code(code, "m")) is cls
    assert set(exceptions.ERRORS_BY_CODE) == set(PROTOCOL_CODES)
    for cls in NOT_PROTOCOL:
        assert not hasattr(cls, "code"), cls


def test_import_chatd_loads_nothing_else() -> None:
    """The daemon imports chatd first; the names load on first use."""
    probe = (
        "import sys; before = set(sys.modules); import chatd; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(chatd.__file__).parent.parent,  # this chatd, not an installed one
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert out.strip() == "['chatd']"
