"""The public API of the ``chatd`` package: what ``__all__`` promises, that each
name resolves to the object of its home module, that the error classes carry
PROTOCOL.md's codes, and that ``import chatd`` alone stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import chatd
from chatd import client, exceptions, wire

EXPECTED_ALL = [
    "AuthOk",
    "BadRequest",
    "BootOk",
    "Channel",
    "ChannelOk",
    "ChatdError",
    "Client",
    "ClientClosed",
    "ClientError",
    "CommandTimeout",
    "Conflict",
    "ConnectFailed",
    "ConnectionLost",
    "DeleteMessageOk",
    "Event",
    "Forbidden",
    "HistoryOk",
    "InternalError",
    "LoginOk",
    "Message",
    "NotFound",
    "Ok",
    "ProtocolError",
    "RateLimited",
    "Reset",
    "ResumeGap",
    "SendOk",
    "StartupError",
    "StreamPosition",
    "SubscribeOk",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "User",
    "__version__",
    "backoff",
    "wire",
]

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


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_name_resolves(name: str) -> None:
    value = getattr(chatd, name)
    if name == "wire":
        assert value is wire
    elif name == "__version__":
        assert isinstance(value, str) and value
    else:
        home = next(m for m in (exceptions, wire, client) if hasattr(m, name))
        assert value is getattr(home, name)
    assert name in dir(chatd)


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
