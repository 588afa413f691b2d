-- Per-key client network allowlist (JSON array of CIDRs; empty: anywhere).
ALTER TABLE keys ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '[]';
