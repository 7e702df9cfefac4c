-- chatd schema for PostgreSQL, version 7: the tables of schema.sql (the sqlite
-- schema) with PostgreSQL types. chatd.postgres_store applies this file to a new
-- database in one transaction and records the version in meta('schema_version');
-- an older database is brought here by chatd/migrations.py (a change here needs
-- a migration there). Times are BIGINT milliseconds since the Unix
-- epoch (UTC); seqs are BIGINT. A message body and a send nonce are the client's
-- text as UTF-8 in BYTEA: they may contain NUL, which TEXT cannot hold.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- keys: schema_version, epoch.

-- The one global counter, one row: seq is the last seq assigned (never
-- decremented); horizon: every event with seq <= horizon has been dropped.
-- Not a SEQUENCE: a sequence hands out values before their transactions commit,
-- so a reader could see 11 committed before 10. A writer locks this row
-- (SELECT ... FOR UPDATE) first and sets it in the transaction that stores its
-- events, so seqs become visible in order, whichever node writes.
CREATE TABLE counter (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    seq      BIGINT NOT NULL,
    horizon  BIGINT NOT NULL
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL UNIQUE,      -- casefold(NFKC(name)): the identity of a name
    pw_hash    TEXT NOT NULL,             -- scrypt$n$r$p$salt$hash
    created_ms BIGINT NOT NULL,
    -- version 2 (added last by its migration, so both paths give one column order):
    role        TEXT NOT NULL DEFAULT 'member'
        CHECK (role IN ('admin', 'member')),
    active      BOOLEAN NOT NULL DEFAULT true,
    created_seq BIGINT NOT NULL DEFAULT 0  -- the stream position when the account was made
);

CREATE TABLE tokens (
    hash       BYTEA PRIMARY KEY,         -- sha256 of the bearer token; the token itself is never stored
    user_id    TEXT NOT NULL REFERENCES users(id),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX tokens_expiry ON tokens(expires_ms);

CREATE TABLE channels (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    name_key    TEXT NOT NULL UNIQUE,
    creator_id  TEXT NOT NULL,
    created_seq BIGINT NOT NULL,
    active_ms   BIGINT NOT NULL,          -- creation, then the time of its newest message
    -- version 4: public, private or dm. A dm's name_key is 'DM:' and its two
    -- member ids in order: one per pair, and never equal to a casefolded name.
    kind        TEXT NOT NULL DEFAULT 'public' CHECK (kind IN ('public', 'private', 'dm'))
);
CREATE INDEX channels_active ON channels(active_ms);

CREATE TABLE messages (
    seq         BIGINT PRIMARY KEY,       -- the seq of its message.sent event
    id          TEXT NOT NULL UNIQUE,
    channel_id  TEXT NOT NULL,
    sender_id   TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    body        BYTEA NOT NULL,           -- UTF-8
    -- version 3:
    edited_ms   BIGINT,                   -- the time of its latest edit, NULL if never
    -- version 5: its words for search with their positions
    -- (chatd.search.tsvector_text: no parser, no stemming)
    words       TSVECTOR NOT NULL DEFAULT ''
);
-- version 4: with sender_id, so unread counts (all messages after the read
-- position, less the user's own) are two scans of this index and nothing else
CREATE INDEX messages_channel ON messages(channel_id, seq, sender_id);
-- No index on at_ms (version 6): message expiry reads the oldest messages by
-- seq, along which times never go backwards (chatd.rules), and stops at the
-- first one young enough. One b-tree less for every send to write.
CREATE INDEX messages_words ON messages USING gin (words);

-- The retained event log. `frame` is the event's wire frame, encoded once when
-- it is committed; replay sends it as stored. A deleted message's message.sent
-- row is removed with the message, so its body never comes back (from queries:
-- the dead row stays in its page until VACUUM reclaims it).
CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    channel_id TEXT NOT NULL,
    frame      BYTEA NOT NULL,
    -- version 3: the message whose body the frame carries (message.sent and
    -- message.edited; NULL for every other event)
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
    nonce        BYTEA NOT NULL,          -- UTF-8
    message_id   TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at_ms        BIGINT NOT NULL,
    channel_id   TEXT NOT NULL,
    channel_name TEXT NOT NULL,
    PRIMARY KEY (user_id, nonce)
);
CREATE INDEX nonces_at ON nonces(at_ms);

-- Invites (version 2): a code lets a new account sign up while open sign-up is
-- off. Only the code's sha256 is kept.
CREATE TABLE invites (
    id         TEXT PRIMARY KEY,
    code_hash  BYTEA NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    uses_left  INTEGER NOT NULL
);
CREATE INDEX invites_expiry ON invites(expires_ms);

-- Membership of private and dm channels (version 4), as seq intervals: the user
-- was a member of the channel for every seq in [from_seq, to_seq] (to_seq NULL:
-- still is). Replay decides whether a user may see an event of a private or dm
-- channel from these, without a query per event. A closed interval is kept while
-- events it covers are retained; expiry drops it once to_seq <= horizon.
CREATE TABLE members (
    channel_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    from_seq   BIGINT NOT NULL,            -- its channel.created or member.added
    to_seq     BIGINT,                     -- its member.removed or channel.deleted
    PRIMARY KEY (channel_id, user_id, from_seq)
);
CREATE INDEX members_user ON members(user_id, channel_id);

-- Read positions (version 4): the seq up to which the user has read the
-- channel, once it moved past where the user began to see it.
CREATE TABLE reads (
    user_id    TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    read_seq   BIGINT NOT NULL,
    PRIMARY KEY (user_id, channel_id)
);
CREATE INDEX reads_channel ON reads(channel_id);

-- One row per schema change: the creation of the database (name 'new database')
-- and each migration applied since, with its time.
CREATE TABLE migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
);
