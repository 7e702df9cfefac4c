"""Every error chatd raises, on the server and in the client.

The tree::

    ChatdError
    ├── ProtocolError            an error frame: one subclass per PROTOCOL.md code
    │   ├── BadRequest           bad_request
    │   ├── Unauthorized         unauthorized
    │   ├── Forbidden            forbidden
    │   ├── NotFound             not_found
    │   ├── Conflict             conflict
    │   ├── TooLarge             too_large      (.limit)
    │   ├── RateLimited          rate_limited   (.retry_after)
    │   ├── ResumeGap            resume_gap     (.horizon, .epoch)
    │   ├── Unavailable          unavailable
    │   └── InternalError        internal
    ├── StartupError             the daemon cannot start: a --db it cannot open
    │                            (an unsupported URL, a database newer than the code)
    └── ClientError              raised by chatd.client only
        ├── ClientClosed         the client was closed while the call waited
        ├── CommandTimeout       no reply within the call's timeout
        ├── ConnectFailed        could not (re)connect within the retry policy
        └── ConnectionLost       dropped after a non-idempotent command was sent,
                                 before its reply: it may or may not have happened

The server raises ProtocolError subclasses from its handlers and turns them into
error frames; the client turns error frames back into the same classes, so one
``except NotFound`` works on both sides.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ChatdError(Exception):
    """Root of every chatd exception."""


class StartupError(ChatdError):
    """The daemon cannot start with this configuration; the message says why."""


class ProtocolError(ChatdError):
    """An error with a PROTOCOL.md code; ``message`` is the human text."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"


class BadRequest(ProtocolError):
    code = "bad_request"


class Unauthorized(ProtocolError):
    code = "unauthorized"


class Forbidden(ProtocolError):
    code = "forbidden"


class NotFound(ProtocolError):
    code = "not_found"


class Conflict(ProtocolError):
    code = "conflict"


class TooLarge(ProtocolError):
    code = "too_large"

    def __init__(self, message: str = "", *, limit: int | None = None, **details: Any) -> None:
        super().__init__(message, limit=limit, **details)
        self.limit = limit


class RateLimited(ProtocolError):
    code = "rate_limited"

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, **details: Any
    ) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class ResumeGap(ProtocolError):
    code = "resume_gap"

    def __init__(
        self,
        message: str = "",
        *,
        horizon: int | None = None,
        epoch: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, horizon=horizon, epoch=epoch, **details)
        self.horizon = horizon
        self.epoch = epoch


class Unavailable(ProtocolError):
    code = "unavailable"


class InternalError(ProtocolError):
    code = "internal"


class ClientError(ChatdError):
    """Raised by chatd.client for conditions that are not error frames."""


class ClientClosed(ClientError):
    pass


class CommandTimeout(ClientError):
    pass


class ConnectFailed(ClientError):
    pass


class ConnectionLost(ClientError):
    """The connection dropped after a non-idempotent command was written and before
    its reply: it may or may not have taken effect."""


ERRORS_BY_CODE: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooLarge,
        RateLimited,
        ResumeGap,
        Unavailable,
        InternalError,
    )
}


def error_from_code(code: str, message: str, **details: Any) -> ProtocolError:
    """The exception for an error frame; an unknown code becomes ProtocolError."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        err = ProtocolError(message, **details)
        err.code = code  # type: ignore[misc]
        return err
    return cls(message, **details)
