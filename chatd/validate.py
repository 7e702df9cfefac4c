"""Rules for names, bodies and other text, without any I/O.

Each check raises a :class:`~chatd.exceptions.ProtocolError` whose message names
the field, so the connection layer can reply with it as is.
"""

from __future__ import annotations

import unicodedata

from .exceptions import BadRequest, TooLarge

NAME_MAX = 64
BODY_MAX = 4096
PASSWORD_MAX = 1024
TOKEN_MAX = 256


def _check_encodable(field: str, value: str) -> None:
    # JSON may carry a lone surrogate ("\ud800"); it cannot be stored as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{field}: contains a lone surrogate") from None


def name(field: str, value: str) -> tuple[str, str]:
    """A user or channel name: returns (display name, identity key).

    NFC, trimmed, 1 to 64 code points, no control characters. The key is the
    casefold of the NFKC form: two names with the same key are the same name.
    """
    _check_encodable(field, value)
    shown = unicodedata.normalize("NFC", value).strip()
    if not shown:
        raise BadRequest(f"{field}: must not be empty")
    if len(shown) > NAME_MAX:
        raise TooLarge(f"{field}: longer than {NAME_MAX} characters", limit=NAME_MAX)
    if any(_is_control(ch) for ch in shown):
        raise BadRequest(f"{field}: contains control or invisible formatting characters")
    return shown, name_key(shown)


# Emoji sequences need the zero-width (non-)joiner; every other format character
# (bidi overrides, zero-width space, ...) only serves to make look-alike names.
_ALLOWED_FORMAT = frozenset("\u200c\u200d")


def _is_control(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Zl", "Zp") or (cat == "Cf" and ch not in _ALLOWED_FORMAT)


def name_key(shown: str) -> str:
    return unicodedata.normalize("NFKC", shown).casefold()


def body(value: str) -> str:
    _check_encodable("body", value)
    if not value:
        raise BadRequest("body: must not be empty")
    if len(value) > BODY_MAX:
        raise TooLarge(f"body: longer than {BODY_MAX} characters", limit=BODY_MAX)
    return value


def password(value: str, field: str = "password") -> str:
    _check_encodable(field, value)
    if not value:
        raise BadRequest(f"{field}: must not be empty")
    if len(value) > PASSWORD_MAX:
        raise BadRequest(f"{field}: longer than {PASSWORD_MAX} characters")
    return value


def text(field: str, value: str, max_len: int | None = None) -> str:
    """An opaque string argument (ids, tokens, nonces, epochs)."""
    _check_encodable(field, value)
    if max_len is not None and len(value) > max_len:
        raise BadRequest(f"{field}: longer than {max_len} characters")
    return value
