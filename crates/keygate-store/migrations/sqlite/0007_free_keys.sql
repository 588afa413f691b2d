-- Self-service free keys: one per normalised email address.
CREATE TABLE free_keys (
    email       TEXT PRIMARY KEY NOT NULL,   -- normalised
    key_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
