-- Decisions per key and outcome: minute rows, rolled up into hours and then days.
CREATE TABLE usage (
    key_id          TEXT NOT NULL,
    grain           TEXT NOT NULL,           -- m | h | d
    start           INTEGER NOT NULL,        -- Unix milliseconds, aligned to the grain
    valid           INTEGER NOT NULL DEFAULT 0,
    rate_limited    INTEGER NOT NULL DEFAULT 0,
    quota_exceeded  INTEGER NOT NULL DEFAULT 0,
    denied          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, grain, start)
);
CREATE INDEX usage_start ON usage (start);
