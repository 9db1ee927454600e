-- phivault schema v8 (postgres): the keyed audit chain.
-- audit_entries.chain_mac is the HMAC-SHA256 tag of an entry under the audit chain key (derived
-- from the tenant's index secret, which only the master key unwraps), over its previous hash and
-- body; the entry's hash covers the tag, so whoever edits an entry without the master key cannot
-- recompute a chain that verifies. NULL on entries written before v8 (the unkeyed chain).
-- audit_chain records, per tenant, the first seq of the keyed chain (entries before it are the
-- unkeyed chain of an older version and verify as such; from it on every entry must be keyed),
-- tagged under the same key, so the switch can be neither moved nor forged without the master
-- key. Created by the audit log when it first opens the trail.
ALTER TABLE audit_entries ADD COLUMN chain_mac BYTEA;
CREATE TABLE audit_chain (
    tenant TEXT PRIMARY KEY NOT NULL,
    keyed_from BIGINT NOT NULL,
    tag BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
