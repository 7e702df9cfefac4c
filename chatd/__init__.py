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
    "BootChannel",
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
    "MarkReadOk",
    "MemberOk",
    "MembersOk",
    "Message",
    "NotFound",
    "Ok",
    "OpenDmOk",
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
        BootChannel,
        BootOk,
        Channel,
        ChannelOk,
        DeleteMessageOk,
        Event,
        HistoryOk,
        LoginOk,
        MarkReadOk,
        MemberOk,
        MembersOk,
        Message,
        Ok,
        OpenDmOk,
        SendOk,
        SubscribeOk,
        User,
    )
else:

    def __getattr__(name: str) -> object:
        # The TYPE_CHECKING imports above say where each name lives; the homes
        # are tried cheapest first, so a name loads no more than its own module
        # needs. Not cached in globals(): the modules are cached by the import
        # system, and this runs once per ``from chatd import ...``.
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        if name == "wire":
            return importlib.import_module(".wire", __name__)
        for home in ("exceptions", "wire", "client"):
            module = importlib.import_module(f".{home}", __name__)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"chatd.{name} is in __all__ but in none of its modules")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
