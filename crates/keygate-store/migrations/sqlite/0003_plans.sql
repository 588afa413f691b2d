-- Plans with rate limits and monthly quotas; per-key overrides; quota use per month.

CREATE TABLE plans (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    limits      TEXT NOT NULL,                 -- JSON: rate_limits, monthly_quota, overage
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

ALTER TABLE keys ADD COLUMN plan TEXT;         -- plans.id
ALTER TABLE keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';   -- JSON override

-- Requests counted against each key's quota, per calendar month (UTC).
CREATE TABLE quota_usage (
    key_id  TEXT NOT NULL,
    month   INTEGER NOT NULL,                  -- year * 12 + month - 1
    used    INTEGER NOT NULL,
    PRIMARY KEY (key_id, month)
);
