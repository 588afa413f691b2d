-- Keys: only the SHA-256 of a key is stored, with a short display start.
CREATE TABLE keys (
    id            TEXT PRIMARY KEY NOT NULL,
    hash          BLOB NOT NULL UNIQUE,
    start         TEXT NOT NULL,
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,           -- JSON array of strings
    meta          TEXT NOT NULL,           -- JSON object
    enabled       INTEGER NOT NULL,
    origin        TEXT NOT NULL,           -- generated | imported
    global        INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,        -- Unix milliseconds, UTC
    updated_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    rotated_to    TEXT,
    last_used_at  INTEGER,
    usage_count   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX keys_created_at ON keys (created_at, id);
-- At most one global admin key per instance.
CREATE UNIQUE INDEX keys_one_global ON keys (global) WHERE global = 1;

-- The change feed: every write appends (seq, entity, id, op) in the same transaction.
CREATE TABLE changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    op         TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX changes_at ON changes (at);

CREATE TABLE settings (
    name   TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL                   -- JSON
);
