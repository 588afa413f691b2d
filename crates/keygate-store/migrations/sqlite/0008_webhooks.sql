-- Webhooks: endpoints, the outbox of events, and one delivery per (event, endpoint).
CREATE TABLE webhook_endpoints (
    id                     TEXT PRIMARY KEY NOT NULL,
    url                    TEXT NOT NULL,
    events                 TEXT NOT NULL,          -- JSON array; [] = every type
    enabled                INTEGER NOT NULL,
    description            TEXT NOT NULL,
    owner                  TEXT,                   -- user id
    project                TEXT,                   -- project id
    secret                 TEXT NOT NULL,          -- whsec_… (keygate signs with it)
    previous_secret        TEXT,
    previous_secret_until  INTEGER,
    signature_header       TEXT,
    consecutive_failures   INTEGER NOT NULL DEFAULT 0,
    disabled_reason        TEXT,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner);

-- The account-level secret of a user (POST /api/v1/webhooks/secret).
CREATE TABLE webhook_account_secrets (
    owner       TEXT PRIMARY KEY NOT NULL,
    secret      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE webhook_events (
    id          TEXT PRIMARY KEY NOT NULL,   -- msg_…
    type        TEXT NOT NULL,
    payload     TEXT NOT NULL,               -- the JSON body, exactly as sent
    created_at  INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id                TEXT PRIMARY KEY NOT NULL,
    event_id          TEXT NOT NULL REFERENCES webhook_events (id),
    endpoint_id       TEXT NOT NULL,
    status            TEXT NOT NULL,         -- pending | delivered | failed
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,
    leased_until      INTEGER,
    last_status_code  INTEGER,
    last_error        TEXT,
    last_latency_ms   INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

-- Notices sent once per subject (key.expiring, key.expired).
CREATE TABLE webhook_notices (
    subject  TEXT NOT NULL,
    kind     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (subject, kind)
);
