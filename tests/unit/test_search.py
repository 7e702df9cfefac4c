"""chatd/search.py: the matching rules of ``search``, against a reference written
straight from PROTOCOL.md's wording, and the edge cases that wording names."""

from __future__ import annotations

import re
import sqlite3
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatd import search
from chatd.exceptions import BadRequest

# ------------------------------------------------------------------ reference


def ref_words(text: str) -> list[str]:
    """Words, one character at a time."""
    out: list[str] = []
    current = ""
    for ch in unicodedata.normalize("NFKC", text):
        if ch.isalnum():
            current += ch
        else:
            if current:
                out.append(current.casefold())
            current = ""
    if current:
        out.append(current.casefold())
    return out


def ref_match(query: str, body: str) -> bool | None:
    """PROTOCOL.md's rule as a scan of the query; None when the query has no word."""
    text = unicodedata.normalize("NFKC", query)
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    pairs = len(quotes) // 2 * 2
    # (segment text, inside a pair of quotes)
    segments: list[tuple[str, bool]] = []
    start, inside = 0, False
    for n, pos in enumerate(quotes):
        segments.append((text[start:pos], inside))
        start = pos + 1
        inside = (not inside) if n < pairs else False
    segments.append((text[start:], inside))
    required: list[tuple[list[str], bool]] = []  # (words, consecutive)
    flat: list[tuple[str, bool]] = []
    for seg, quoted in segments:
        ws = ref_words(seg)
        if quoted and ws:
            required.append((ws, True))
        elif ws:
            required += [([w], False) for w in ws]
        flat += [(w, quoted) for w in ws]
    if not flat:
        return None
    body_words = ref_words(body)
    last_word, last_quoted = flat[-1]
    for i, (ws, _) in enumerate(required):
        is_last = i == len(required) - 1
        if is_last and not last_quoted:
            if not any(b.startswith(last_word) for b in body_words):
                return False
            continue
        n = len(ws)
        if not any(body_words[j:j + n] == ws for j in range(len(body_words) - n + 1)):
            return False
    return True


def check(query: str, body: str) -> bool:
    return search.matches(search.parse(query), body)


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    ("query", "body", "expected"),
    [
        ("hello", "Hello, world", True),
        ("hel", "Hello, world", True),  # the last word is a prefix
        ("hel world", "Hello, world", False),  # only the last one
        ("world hel", "Hello, world", True),
        ('"hel"', "Hello, world", False),  # a quoted last word is not a prefix
        ('"hello world"', "hello, world!", True),
        ('"world hello"', "hello world", False),  # in that order
        ('"hello world"', "hello big world", False),  # consecutively
        ('"hello world', "hello big world", True),  # an unpaired quote separates
        ('a "b c" d"', "d x b c a", True),  # the third quote has no partner
        ('"b c" "d"', "b c dd", False),
        ('"b c" d', "b c dd", True),
        ("ﬁsh", "fish soup", True),  # NFKC: the ligature is "fi"
        ("fish", "ﬁsh soup", True),
        ("STRASSE", "straße", True),  # casefold: ß is ss
        ("straße", "STRASSE", True),
        ("42", "answer: 42!", True),
        ("4", "answer: 42!", True),
        ("foo_bar", "foo bar", True),  # '_' is not alphanumeric: a separator
        ("foo", "foo_bar", True),
        ("bar", "foo_bar", True),
        ("foobar", "foo_bar", False),
        ("x*", "xylophone", True),  # '*' is a separator, not FTS syntax
        ("NEAR(a b)", "near a b", True),
        ("a AND b", "a b and", True),
        ("a -b", "a", False),
        ("^start", "start here", True),
        ("café", "CAFÉ", True),
        ("cafe", "café", False),  # accents are not removed
        ("\uff11\uff12", "12", True),  # fullwidth digits are NFKC digits
    ],
)
def test_examples(query: str, body: str, expected: bool) -> None:
    assert check(query, body) is expected
    assert ref_match(query, body) is expected


@pytest.mark.parametrize("query", ["", "   ", '""', '" "', "!!! ---", "_", "*", '"'])
def test_a_query_without_a_word_is_a_bad_request_naming_the_field(query: str) -> None:
    with pytest.raises(BadRequest, match=r"\$\.query"):
        search.parse(query)


def test_too_many_words_is_a_bad_request() -> None:
    search.parse(" ".join(["w"] * search.WORDS_MAX))
    with pytest.raises(BadRequest, match=r"\$\.query"):
        search.parse(" ".join(["w"] * (search.WORDS_MAX + 1)))


def test_parse_shapes() -> None:
    q = search.parse('Alpha "Beta GAMMA" delta')
    assert q.groups == (("alpha",), ("beta", "gamma")) and q.prefix == "delta"
    q = search.parse('alpha "beta"')
    assert q.groups == (("alpha",), ("beta",)) and q.prefix is None


def test_index_text_and_long_words() -> None:
    assert search.index_text("Hello, wORLD_42 ﬁ") == "hello world 42 fi"
    long = "x" * (search.TERM_MAX + 10)
    assert search.index_text(long) == "x" * search.TERM_MAX
    # a long query word is looked up by its cut form, confirmed in full
    assert check(long, long + " y")
    assert not check(long + "z", long + " y")
    assert search.fts5_query(search.parse(long)) == '"' + "x" * search.TERM_MAX + '"'


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=300))
@example("Hello, wORLD_42! " + "Ab1" * 60 + " x")
def test_an_ascii_body_indexes_as_the_general_path_does(body: str) -> None:
    # index_text takes a shorter road for ASCII; it must give what terms() gives
    assert search.index_text(body) == " ".join(search.terms(body))


def test_a_long_prefix_is_looked_up_by_its_start(fts: sqlite3.Connection) -> None:
    q = search.parse("deployment")
    assert search.fts5_query(q) == '"deploy"*'
    assert search.tsquery(q) == "'deployment':*"
    fts.execute("DELETE FROM t")
    fts.executemany("INSERT INTO t(rowid, words) VALUES (?, ?)",
                    [(1, "deployed"), (2, "deployments now")])
    found = [r for r, in fts.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rowid",
                                     (search.fts5_query(q),))]
    assert found == [1, 2]  # candidates; matches() keeps the second only
    assert [search.matches(q, b) for b in ("deployed", "deployments now")] == [False, True]


def test_tsvector_text_has_every_position() -> None:
    assert search.tsvector_text("a b a c") == "'a':1,3 'b':2 'c':4"
    assert search.tsvector_text("") == ""
    many = search.tsvector_text(" ".join(["x"] * 300 + ["y"]))
    assert many.endswith(f"'y':301 '{search.PG_MANY}'")  # PostgreSQL keeps 256 positions


def test_query_strings_for_the_databases() -> None:
    q = search.parse('one "two three" fo')
    assert search.fts5_query(q) == '"one" AND "two three" AND "fo"*'
    assert search.tsquery(q) == "'one' & ( 'two' <-> 'three' | '~' ) & 'fo':*"
    q = search.parse('"x"')
    assert search.fts5_query(q) == '"x"' and search.tsquery(q) == "'x'"


def test_no_casefolded_word_holds_a_separator_of_the_index() -> None:
    """index_text relies on it: every alphanumeric character case-folds to
    characters that are neither ASCII punctuation nor white space."""
    import sys

    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch.isalnum():
            folded = ch.casefold()
            assert not any((c.isascii() and not c.isalnum()) or c.isspace() for c in folded), cp


# ------------------------------------------------------------------ properties

# Text biased towards what makes the rules interesting: a few short words that
# collide, quotes, separators, case, ligatures and other NFKC changes.
_pieces = st.sampled_from(
    ["a", "ab", "abc", "b", "ba", "A", "AB", "ß", "ss", "SS", "ﬁ", "fi", "1", "12", "\uff11",
     "é", "é", "_", "-", "*", " ", " ", " ", '"', '"', "AND", "near", "İ", "i̇", "Ⅻ", "x"]
)
_texts = st.lists(_pieces, max_size=12).map("".join)
_any = st.text(max_size=20)


@settings(max_examples=600, deadline=None)
@given(query=st.one_of(_texts, _any), body=st.one_of(_texts, _any))
def test_matches_is_the_reference(query: str, body: str) -> None:
    expected = ref_match(query, body)
    if expected is None:
        with pytest.raises(BadRequest):
            search.parse(query)
        return
    try:
        parsed = search.parse(query)
    except BadRequest:
        assert len(ref_words(query)) > search.WORDS_MAX
        return
    assert search.matches(parsed, body) is expected
    assert search.words(body) == ref_words(body)


@pytest.fixture(scope="module")
def fts() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(words, tokenize='ascii',"
                 " prefix='1 2 3 4 5 6')")
    return conn


@settings(max_examples=400, deadline=None)
@given(query=_texts, body=st.one_of(_texts, _any))
def test_the_fts5_query_finds_every_match(fts: sqlite3.Connection, query: str,
                                           body: str) -> None:
    """The index finds a superset of the matches (exactly them, but for a prefix
    longer than the longest prefix index), and no query text is FTS5 syntax: no
    OperationalError whatever the user typed."""
    try:
        parsed = search.parse(query)
    except BadRequest:
        return
    fts.execute("DELETE FROM t")
    fts.execute("INSERT INTO t(rowid, words) VALUES (1, ?)", (search.index_text(body),))
    found = fts.execute("SELECT rowid FROM t WHERE t MATCH ?",
                        (search.fts5_query(parsed),)).fetchall()
    if search.matches(parsed, body):
        assert found
    elif parsed.prefix is None or len(parsed.prefix) <= search.FTS5_PREFIX_MAX:
        assert not found


def test_fts5_treats_syntax_as_text(fts: sqlite3.Connection) -> None:
    fts.execute("DELETE FROM t")
    fts.execute("INSERT INTO t(rowid, words) VALUES (1, ?)",
                (search.index_text("near and or not x"),))
    for query in ['NEAR(x y)', 'x AND', 'OR', 'NOT x', '"', 'x"*', "words:x", "^x", "-x",
                  "a" * 10_000, "(x", "x)", "{x}", "x + y", '"x" "']:
        try:
            parsed = search.parse(query)
        except BadRequest:
            continue
        fts.execute("SELECT rowid FROM t WHERE t MATCH ?", (search.fts5_query(parsed),))


def test_regex_free_word_split_agrees_with_a_regex_on_ascii() -> None:
    text = "Hello, w0rld_x y-z  42"
    assert search.words(text) == [w.lower() for w in re.findall(r"[A-Za-z0-9]+", text)]
