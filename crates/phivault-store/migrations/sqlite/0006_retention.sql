-- phivault schema v6: retention (issue 6). A resource of a type with a configured retention
-- period is disposed of once its last write (current_resources.recorded_at, unix seconds) is
-- older than the period: its ciphertext rows (every version), its blind search tokens and its
-- current pointer are deleted in one transaction that also writes a row here. A row holds ids,
-- the type, counts and times only (no PHI: the id is an opaque server id).
CREATE TABLE retention_ledger (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    versions BIGINT NOT NULL,
    last_recorded_at BIGINT NOT NULL,
    disposed_at BIGINT NOT NULL
);
CREATE INDEX retention_ledger_resource ON retention_ledger (tenant, rtype, id);
-- The expiry scan: per type, oldest first.
CREATE INDEX current_resources_recorded ON current_resources (tenant, rtype, recorded_at);
