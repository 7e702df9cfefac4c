-- chatd schema, version 1. The store applies this file to a new database and
-- records the version in meta('schema_version'); later versions add migrations.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
-- keys: schema_version, epoch, seq (the one global counter: last seq assigned,
-- never decremented), horizon (every event with seq <= horizon has been dropped).

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL UNIQUE,      -- casefold(NFKC(name)): the identity of a name
    pw_hash    TEXT NOT NULL,             -- scrypt$n$r$p$salt$hash
    created_ms INTEGER NOT NULL
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
    active_ms   INTEGER NOT NULL          -- creation, then the time of its newest message
) WITHOUT ROWID;
CREATE INDEX channels_active ON channels(active_ms);

CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY,      -- the seq of its message.sent event
    id          TEXT NOT NULL UNIQUE,
    channel_id  TEXT NOT NULL,
    sender_id   TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX messages_channel ON messages(channel_id, seq);
CREATE INDEX messages_at ON messages(at_ms);

-- The retained event log. `frame` is the event's wire frame, encoded once when
-- it is committed; replay sends it as stored. A deleted message's message.sent
-- row is removed with the message, so its body never comes back.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    channel_id TEXT NOT NULL,
    frame      BLOB NOT NULL
);
CREATE INDEX events_channel ON events(channel_id, seq);

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
