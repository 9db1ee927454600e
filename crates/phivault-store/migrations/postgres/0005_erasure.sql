-- phivault schema v5 (postgres): the erasure ledger (DESIGN.md invariant 6).
-- Erasing a patient deletes the row of their data key in data_keys (the only copy of the wrapped
-- key: crypto-shredding) and records it here, in the same transaction. A row holds no PHI and
-- not the patient id in the clear: the key's id (to re-apply the erasure to a restored older
-- backup, whose data_keys row has this key_id) and the key's owner token, HMAC(index key,
-- tenant | patient id) as in data_keys.owner (to refuse any later write to, or new key for,
-- the erased patient's compartment, and to re-apply the erasure to a backup holding the
-- patient's key under another id). resources counts the resources whose current version was
-- sealed under the key. index_swept_at is set once the erased compartment's blind search
-- tokens have been deleted (Store::sweep_erasures, after the erasure commits), NULL until then.
CREATE TABLE erasures (
    key_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    owner BYTEA NOT NULL,
    erased_at BIGINT NOT NULL,
    resources BIGINT NOT NULL,
    index_swept_at BIGINT
);
CREATE UNIQUE INDEX erasures_owner ON erasures (tenant, owner);
