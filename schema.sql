-- chatd schema, version 7: a new database. The store applies this file to a new
-- database and records the version in meta('schema_version'); a database made
-- at an older version is brought here by chatd/migrations.py (version 1 is
-- chatd 0.1.0's schema). A change here needs a migration there.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
-- keys: schema_version, epoch, seq (the one global counter: last seq assigned,
-- never decremented; since version 6 the counter is the newest of this, the
-- horizon and the newest event, and this row is no longer written each commit:
-- chatd.sqlite_store.COUNTER), horizon (every event with seq <= horizon has
-- been dropped), search_indexed (version 7, while the search index trails: every
-- message with seq <= it is in message_words, the newer ones are not yet;
-- chatd.sqlite_store.INDEXED_SEQ).

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL UNIQUE,      -- casefold(NFKC(name)): the identity of a name
    pw_hash    TEXT NOT NULL,             -- scrypt$n$r$p$salt$hash
    created_ms INTEGER NOT NULL,
    -- version 2 (added last by its migration, so both paths give one column order):
    role        TEXT NOT NULL DEFAULT 'member'
        CHECK (role IN ('admin', 'member')),
    active      INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_seq INTEGER NOT NULL DEFAULT 0  -- the stream position when the account was made
) WITHOUT ROWID;

CREATE TABLE tokens (
    hash       BLOB PRIMARY KEY,          -- sha256 of the bearer token; the token itself is never stored
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tokens_expiry ON tokens(expires_ms);

CREATE TABLE channels (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    name_key    TEXT NOT NULL UNIQUE,
    creator_id  TEXT NOT NULL,
    created_seq INTEGER NOT NULL,
    -- creation, then the time of a newer message: a send stores its time only
    -- when this is a minute older (chatd.rules.TOUCH_EVERY_MS), a delete stores
    -- its message's; idle expiry also reads the newest message still there
    active_ms   INTEGER NOT NULL,
    -- version 4: public, private or dm. A dm's name_key is 'DM:' and its two
    -- member ids in order: one per pair, and never equal to a casefolded name.
    kind        TEXT NOT NULL DEFAULT 'public' CHECK (kind IN ('public', 'private', 'dm'))
) WITHOUT ROWID;
CREATE INDEX channels_active ON channels(active_ms);

CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY,      -- the seq of its message.sent event
    id          TEXT NOT NULL UNIQUE,
    channel_id  TEXT NOT NULL,
    sender_id   TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    body        TEXT NOT NULL,
    -- version 3:
    edited_ms   INTEGER,                  -- the time of its latest edit, NULL if never
    -- version 5: its words for search, as chatd.search.index_text makes them
    -- (NFKC, case-folded, separated by one space)
    words       TEXT NOT NULL DEFAULT ''
);
-- version 4: with sender_id, so unread counts (all messages after the read
-- position, less the user's own) are two scans of this index and nothing else
CREATE INDEX messages_channel ON messages(channel_id, seq, sender_id);
-- No index on at_ms (version 6): message expiry reads the oldest messages by
-- seq, along which times never go backwards (chatd.rules), and stops at the
-- first one young enough. One b-tree less for every send to write.

-- The search index (version 5): FTS5 over messages.words (external content, so
-- the words are stored once), rowid = the message's seq. The store writes it in
-- the transaction of every insert, edit and delete of a message (chatd
-- sqlite_store: MESSAGE_WORDS_*), or lets it trail the newest messages by a
-- batch (meta('search_indexed'), the daemon's default), in bulk like the rows
-- of the send path; not by triggers, because FTS5 writes its pending terms out
-- at each statement savepoint, which a trigger opens for every row (3 times the
-- cost). The 'ascii' tokenizer splits only at ASCII non-alphanumerics: each
-- stored word is one token. The prefix indexes (1 to 6 characters) make the
-- last word of a query, a prefix, as cheap to look up as a whole word: without
-- them FTS5 merges the whole doclist of every word that begins with it (40 ms
-- for a frequent word of 1M messages).
CREATE VIRTUAL TABLE message_words USING fts5(
    words, content='messages', content_rowid='seq', tokenize='ascii', columnsize=0,
    prefix='1 2 3 4 5 6'
);
-- No merging of the index's segments in the commits of sends: that work, not
-- the inserts, was most of what the index cost a send (0.2 ms of CPU for a
-- commit of one send; 13 µs a send in commits of 64). The expiry round merges
-- instead (WriteTx.tidy_search_index), and FTS5's crisis merge (16 segments on
-- one level) still bounds what a search has to read between rounds.
INSERT INTO message_words(message_words, rank) VALUES ('automerge', 0);

-- The retained event log. `frame` is the event's wire frame, encoded once when
-- it is committed; replay sends it as stored. A deleted message's message.sent
-- row is removed with the message, so its body never comes back.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    channel_id TEXT NOT NULL,
    frame      BLOB NOT NULL,
    -- version 3: the message whose body the frame carries (message.edited; NULL
    -- for every other event; a message.sent has the message's own seq, and
    -- one stored before version 6 has its id here too): an edit rewrites these
    -- frames, a delete drops them
    message_id TEXT,
    -- version 4: who may receive it (PROTOCOL.md "Who sees what"): restricted = 1
    -- for an event of a private or dm channel (members at its seq, see members);
    -- only_user: an account event (read.updated), for that user alone
    restricted INTEGER NOT NULL DEFAULT 0,
    only_user  TEXT
);
CREATE INDEX events_channel ON events(channel_id, seq);
CREATE INDEX events_message ON events(message_id) WHERE message_id IS NOT NULL;

-- send idempotency: (user, nonce) -> the first ok. No body is kept here.
CREATE TABLE nonces (
    user_id      TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    channel_id   TEXT NOT NULL,
    channel_name TEXT NOT NULL,
    PRIMARY KEY (user_id, nonce)
) WITHOUT ROWID;
CREATE INDEX nonces_at ON nonces(at_ms);

-- Invites (version 2): a code lets a new account sign up while open sign-up is
-- off. Only the code's sha256 is kept.
CREATE TABLE invites (
    id         TEXT PRIMARY KEY,
    code_hash  BLOB NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX invites_expiry ON invites(expires_ms);

-- Membership of private and dm channels (version 4), as seq intervals: the user
-- was a member of the channel for every seq in [from_seq, to_seq] (to_seq NULL:
-- still is). Replay decides whether a user may see an event of a private or dm
-- channel from these, without a query per event. A closed interval is kept while
-- events it covers are retained; expiry drops it once to_seq <= horizon.
CREATE TABLE members (
    channel_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    from_seq   INTEGER NOT NULL,            -- its channel.created or member.added
    to_seq     INTEGER,                     -- its member.removed or channel.deleted
    PRIMARY KEY (channel_id, user_id, from_seq)
) WITHOUT ROWID;
CREATE INDEX members_user ON members(user_id, channel_id);

-- Read positions (version 4): the seq up to which the user has read the
-- channel, once it moved past where the user began to see it.
CREATE TABLE reads (
    user_id    TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    read_seq   INTEGER NOT NULL,
    PRIMARY KEY (user_id, channel_id)
) WITHOUT ROWID;
CREATE INDEX reads_channel ON reads(channel_id);

-- One row per schema change: the creation of the database (name 'new database')
-- and each migration applied since, with its time.
CREATE TABLE migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ms INTEGER NOT NULL
);
