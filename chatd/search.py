"""The matching rules of the ``search`` command (PROTOCOL.md, "Commands"), without I/O.

Both the query and a body are normalised to NFKC; a *word* is then a maximal run
of characters for which :meth:`str.isalnum` is true, compared after
:meth:`str.casefold`. Every word of the query must be in the body; the words
between a pair of double quotes (quotes pair from the left; a last quote without
a partner is a separator) must appear consecutively, in that order; the last
word of the query, when it is not inside quotes, also matches a body word that
begins with it.

The backends keep an index of each message's words (:func:`index_text`) to find
*candidates* (:func:`fts5_query` on sqlite, :func:`tsquery` on PostgreSQL), and
every candidate is confirmed with :func:`matches` on its current body, so what
``search`` returns is decided here, whatever a database's tokenizer does. Terms
are cut to :data:`TERM_MAX` characters in the index (PostgreSQL refuses a
lexeme over 2 KiB); a longer query word is looked up by its cut form and
confirmed in full by :func:`matches`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .exceptions import BadRequest

#: at most this many words in a query: each one is an index lookup
WORDS_MAX = 32
#: the longest prefix that sqlite's index has a prefix index for (schema.sql:
#: prefix='1 2 3 4 5 6'); a longer prefix is looked up by its first 6
#: characters (a superset: FTS5 would otherwise merge the whole doclist of every
#: word that begins with it, 10 ms and more for a frequent word)
FTS5_PREFIX_MAX = 6
#: index terms are cut to this many characters (4 bytes each at most in UTF-8:
#: well under PostgreSQL's 2047-byte lexeme limit)
TERM_MAX = 128


#: in ASCII, str.isalnum is exactly these characters
_ASCII_RUN = re.compile(r"[0-9A-Za-z]+")


def _runs(text: str) -> list[str]:
    """The maximal runs of alphanumeric characters of ``text`` (already NFKC)."""
    if text.isascii():  # most bodies: one regex pass instead of a loop in Python
        return _ASCII_RUN.findall(text)
    runs: list[str] = []
    start = -1
    for i, ch in enumerate(text):
        if ch.isalnum():
            if start < 0:
                start = i
        elif start >= 0:
            runs.append(text[start:i])
            start = -1
    if start >= 0:
        runs.append(text[start:])
    return runs


def words(text: str) -> list[str]:
    """The words of a body or of a query segment, in order, case-folded."""
    return [run.casefold() for run in _runs(unicodedata.normalize("NFKC", text))]


@dataclass(frozen=True)
class Query:
    """A parsed query: every group must be in the body (a group of several words
    as consecutive words, in order); ``prefix``, when set, must begin a body word."""

    groups: tuple[tuple[str, ...], ...]
    prefix: str | None

    def all_words(self) -> list[str]:
        found = [w for group in self.groups for w in group]
        return found if self.prefix is None else [*found, self.prefix]


def parse(query: str) -> Query:
    """The words and phrases of a query; ``bad_request`` if it has no word."""
    text = unicodedata.normalize("NFKC", query)
    parts = text.split('"')
    # parts[1], parts[3], ... are between a pair of quotes; with an even number of
    # parts the last quote has no partner: its part is outside, like parts[0].
    paired = len(parts) - (1 if len(parts) % 2 == 0 else 0)
    groups: list[tuple[str, ...]] = []
    last_quoted = False
    for i, part in enumerate(parts):
        found = [w.casefold() for w in _runs(part)]
        if not found:
            continue
        if i % 2 == 1 and i < paired:
            groups.append(tuple(found))
            last_quoted = True
        else:
            groups.extend((w,) for w in found)
            last_quoted = False
    if not groups:
        raise BadRequest("$.query: has no word (letters or digits)")
    if sum(len(g) for g in groups) > WORDS_MAX:
        raise BadRequest(f"$.query: more than {WORDS_MAX} words")
    prefix = None
    if not last_quoted:
        prefix = groups.pop()[0]
    return Query(tuple(dict.fromkeys(groups)), prefix)


def _contains(haystack: list[str], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    first = needle[0]
    return any(
        haystack[i] == first and tuple(haystack[i:i + n]) == needle
        for i in range(len(haystack) - n + 1)
    )


def matches(query: Query, body: str) -> bool:
    """Whether ``body`` (its current text) matches the parsed query."""
    found = words(body)
    present = set(found)
    for group in query.groups:
        if len(group) == 1:
            if group[0] not in present:
                return False
        elif not _contains(found, group):
            return False
    return query.prefix is None or any(w.startswith(query.prefix) for w in present)


def terms(body: str) -> list[str]:
    """The index terms of a body: its words, cut to :data:`TERM_MAX`, in order."""
    return [w[:TERM_MAX] for w in words(body)]


def index_text(body: str) -> str:
    """What the index holds for a body: its terms separated by single spaces.

    A word never contains a space, an ASCII punctuation character or a quote
    (case folding an alphanumeric character never yields one), so each word is
    one token for sqlite's ``ascii`` tokenizer and one lexeme for PostgreSQL.
    """
    if body.isascii():
        # What terms() gives, in one pass for most bodies (the writer runs this for
        # every send): NFKC leaves ASCII as it is, and casefold() of ASCII is lower().
        return " ".join([w[:TERM_MAX] for w in _ASCII_RUN.findall(body.lower())])
    return " ".join(terms(body))


#: PostgreSQL keeps at most 256 positions of a lexeme in a tsvector (it drops the
#: rest), and a phrase needs them all to be found exactly
_PG_POSITIONS_MAX = 256
#: the lexeme of a body some word of which has more positions than a tsvector
#: keeps: every phrase query also takes such a body as a candidate. Not a word
#: (not alphanumeric), so no query word ever equals it.
PG_MANY = "~"


def tsvector_text(text: str) -> str:
    """The ``tsvector`` (its input syntax) of an :func:`index_text`: each term
    with its positions (1-based), for PostgreSQL's phrase operator ``<->``."""
    positions: dict[str, list[str]] = {}
    for i, term in enumerate(text.split(), 1):
        positions.setdefault(term, []).append(str(i))
    lexemes = [f"'{term}':{','.join(at)}" for term, at in positions.items()]
    if any(len(at) > _PG_POSITIONS_MAX for at in positions.values()):
        lexemes.append(f"'{PG_MANY}'")
    return " ".join(lexemes)


def _lookup(word: str, prefix: bool) -> tuple[str, bool]:
    """The index term to look up for a query word, and whether as a prefix.

    A word of at least TERM_MAX characters can only be a body word (or begin
    one) whose cut term equals its cut form.
    """
    if len(word) >= TERM_MAX:
        return word[:TERM_MAX], False
    return word, prefix


def fts5_query(query: Query) -> str:
    """An FTS5 MATCH expression that finds a superset of the matches.

    Every token is a double-quoted string, so FTS5 syntax (``AND``, ``NEAR``,
    ``*``, ``-``, ``^``, column filters) in the user's text is never syntax.
    """

    def quoted(term: str) -> str:
        return '"' + term.replace('"', '""') + '"'

    parts = []
    for group in query.groups:
        cut = [_lookup(w, False)[0] for w in group]
        parts.append(quoted(" ".join(cut)))
    if query.prefix is not None:
        term, prefix = _lookup(query.prefix, True)
        if prefix:
            term = term[:FTS5_PREFIX_MAX]
        parts.append(quoted(term) + ("*" if prefix else ""))
    return " AND ".join(parts)


def tsquery(query: Query) -> str:
    """A PostgreSQL ``tsquery`` (its input syntax) that finds a superset of the
    matches (:func:`tsvector_text` the index): every word as a lexeme, a phrase
    as its words joined by ``<->`` (or a body that kept too few positions)."""

    def quoted(term: str) -> str:
        return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"

    parts: dict[str, None] = {}
    for group in query.groups:
        lexemes = [quoted(_lookup(w, False)[0]) for w in group]
        if len(lexemes) == 1:
            parts[lexemes[0]] = None
        else:
            parts[f"( {' <-> '.join(lexemes)} | {quoted(PG_MANY)} )"] = None
    if query.prefix is not None:
        term, prefix = _lookup(query.prefix, True)
        parts[quoted(term) + (":*" if prefix else "")] = None
    return " & ".join(parts)
