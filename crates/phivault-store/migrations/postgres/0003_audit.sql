-- phivault schema v3 (postgres): the audit trail (DESIGN.md invariants 2 and 3).
-- audit_entries holds each entry's canonical bytes (ids only, never PHI values) with its place
-- in the hash chain; the hashes are computed by phivault-audit, this schema only keeps them.
-- actor and patient are copied out of the body for the access-log indexes.
-- audit_checkpoints holds signed Merkle roots over the first `size` entry hashes.
-- audit_keys holds the Ed25519 checkpoint-signing keys: the public key in the clear, the
-- PKCS#8 private key sealed with the tenant's directory data key.
CREATE TABLE audit_entries (
    seq BIGINT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    body BYTEA NOT NULL,
    entry_hash BYTEA NOT NULL,
    prev_hash BYTEA NOT NULL,
    time BIGINT NOT NULL,
    actor TEXT NOT NULL,
    patient TEXT
);
CREATE INDEX audit_entries_actor ON audit_entries (actor, time);
CREATE INDEX audit_entries_patient ON audit_entries (patient, time);

CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY NOT NULL,
    root BYTEA NOT NULL,
    last_entry_hash BYTEA NOT NULL,
    time BIGINT NOT NULL,
    signature BYTEA NOT NULL
);

CREATE TABLE audit_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    sealed_private BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
