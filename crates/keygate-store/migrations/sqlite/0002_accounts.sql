-- Accounts, token families, the audit log and instance secrets.

ALTER TABLE keys ADD COLUMN owner TEXT;            -- users.id; NULL for the instance
CREATE INDEX keys_owner ON keys (owner, created_at);

CREATE TABLE users (
    id             TEXT PRIMARY KEY NOT NULL,
    username       TEXT NOT NULL,
    username_key   TEXT NOT NULL UNIQUE,           -- lower-cased, for unique sign-in names
    email          TEXT,
    password_hash  TEXT NOT NULL,                  -- argon2id PHC string
    role           TEXT NOT NULL,                  -- admin | user
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    last_login_at  INTEGER
);

-- One family per sign-in; every refresh token of a sign-in shares it. Reusing a rotated
-- refresh token revokes the family (and, in memory, its access tokens).
CREATE TABLE token_families (
    family      TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    reason      TEXT
);
CREATE INDEX token_families_user ON token_families (user_id);

CREATE TABLE refresh_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
    family      TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER                            -- set when rotated
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

-- Append-only: nothing in keygate updates or deletes rows here.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,                     -- user:<id> | key:<id> | instance | cli | anonymous
    action      TEXT NOT NULL,                     -- key.create, auth.login_failed, ...
    target      TEXT,
    ip          TEXT,
    credential  TEXT,                              -- key id or token family, never the secret
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_action ON audit_log (action, seq);

-- Signing keys and the recoverable copy of the global key. Protect the data directory.
CREATE TABLE secrets (
    name   TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL
);
