"""chatd: a self-hosted realtime chat daemon. See README.md and docs/protocol.md.

The public API is importable from here (``from chatd import Client, NotFound,
wire``); ``__all__`` lists it. Its names are loaded on first use (PEP 562): the
daemon imports this package before anything else (``python -m chatd``, and
``from . import __version__`` in the server modules), and an eager import would
make every ``import chatd`` pay for msgspec, the client and websockets' client
side. Importing chatd loads this file and nothing else.
"""

__version__ = "0.1.0"

# typing.TYPE_CHECKING without importing typing, which would cost more than the
# rest of this file; type checkers treat any name TYPE_CHECKING the same.
TYPE_CHECKING = False

__all__ = [
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

if TYPE_CHECKING:
    from . import wire
    from .client import Client, Reset, StreamPosition, backoff
    from .exceptions import (
        BadRequest,
        ChatdError,
        ClientClosed,
        ClientError,
        CommandTimeout,
        Conflict,
        ConnectFailed,
        ConnectionLost,
        Forbidden,
        InternalError,
        NotFound,
        ProtocolError,
        RateLimited,
        ResumeGap,
        StartupError,
        TooLarge,
        Unauthorized,
        Unavailable,
    )
    from .wire import (
        AuthOk,
        BootOk,
        Channel,
        ChannelOk,
        DeleteMessageOk,
        Event,
        HistoryOk,
        LoginOk,
        Message,
        Ok,
        SendOk,
        SubscribeOk,
        User,
    )
else:
    # The module that defines each name of __all__ (wire is a module itself).
    _HOMES = {
        "client": frozenset({"Client", "Reset", "StreamPosition", "backoff"}),
        "exceptions": frozenset(
            {
                "BadRequest",
                "ChatdError",
                "ClientClosed",
                "ClientError",
                "CommandTimeout",
                "Conflict",
                "ConnectFailed",
                "ConnectionLost",
                "Forbidden",
                "InternalError",
                "NotFound",
                "ProtocolError",
                "RateLimited",
                "ResumeGap",
                "StartupError",
                "TooLarge",
                "Unauthorized",
                "Unavailable",
            }
        ),
        "wire": frozenset(
            {
                "AuthOk",
                "BootOk",
                "Channel",
                "ChannelOk",
                "DeleteMessageOk",
                "Event",
                "HistoryOk",
                "LoginOk",
                "Message",
                "Ok",
                "SendOk",
                "SubscribeOk",
                "User",
            }
        ),
    }

    def __getattr__(name: str) -> object:
        # Not cached in globals(): the import system caches the modules, and a
        # lookup here is a dict scan, cheap next to any use of the name.
        import importlib

        if name == "wire":
            return importlib.import_module(".wire", __name__)
        for module, names in _HOMES.items():
            if name in names:
                return getattr(importlib.import_module(f".{module}", __name__), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
