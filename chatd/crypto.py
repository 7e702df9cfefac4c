"""Identifiers, password hashes and bearer tokens. No I/O.

Passwords are hashed with scrypt (memory-hard; 16 MiB at the default n=2**14,
r=8) and a random 16-byte salt; the parameters are stored with each hash so they
can be raised later without breaking old accounts. Tokens are 256 random bits;
only their SHA-256 is stored: a token has full entropy, so a fast hash is enough
and a stolen database yields no usable token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import secrets


def new_id(namespace: str) -> str:
    """``namespace`` letter + 20 lower-case base32 characters (100 random bits)."""
    return namespace + base64.b32encode(os.urandom(13)).decode("ascii")[:20].lower()


_B32HEX = "0123456789abcdefghijklmnopqrstuv"
#: every pair of base32hex digits, by the 10-bit value it spells
_B32_PAIRS = [a + b for a in _B32HEX for b in _B32HEX]
_PAIR_SHIFTS = tuple(range(90, -1, -10))
_U64 = (1 << 64) - 1


def new_ordered_id(namespace: str, n: int, rng: random.Random) -> str:
    """Like :func:`new_id`, but ids made with a growing ``n`` sort in that order.

    ``namespace`` letter + 20 characters of base32 in its sort-preserving
    alphabet (``0-9a-v``): ``n`` as 64 bits, then 36 bits from ``rng``. Messages
    get their seq as ``n``: a random id lands on a random page of the unique
    index on message ids, so a commit of 32 sends dirtied ~32 index pages and
    wrote them all to the WAL; ordered ids append to one page
    (docs/performance.md). The tail only tells apart ids of different
    databases, so it need not be unpredictable: a seeded PRNG costs no syscall
    (``os.urandom`` also lets go of the GIL, which the writer then waits to get
    back).
    """
    # 100 bits: n's 64, then 36 random; as 10 digit pairs from a table (base64's
    # b32hexencode is a Python loop over 5-byte chunks, 10 % of the writer's time).
    v = ((n & _U64) << 36) | rng.getrandbits(36)
    t = _B32_PAIRS
    return namespace + "".join([t[(v >> s) & 1023] for s in _PAIR_SHIFTS])


def new_epoch() -> str:
    return "E" + secrets.token_hex(8)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join(("scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, _unb64(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 1024 * 1024,
        dklen=32,
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"))
