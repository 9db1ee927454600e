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
-- The expiry scan reads a type's pointers through the primary key (tenant, rtype, id) and
-- filters on recorded_at: an hourly scan. A (tenant, rtype, recorded_at) index was tried and
-- removed: on PostgreSQL tables not yet analyzed, the planner preferred it for searches and
-- chose a nested-loop plan over the whole search index (a search of 300 patients ran for
-- minutes; e2e_durability).
