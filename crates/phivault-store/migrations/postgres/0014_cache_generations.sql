-- phivault schema v14: generation values that let a process keep what it derived from stored
-- rows (verified bearer tokens, patients' consents) between requests. Every transaction that
-- changes what such a derivation would answer (a token revoked, a user or client disabled, a
-- patient link or a second factor changed, a Consent written, an erasure, a restore's
-- replays) writes a fresh random value to the row of its kind in the same transaction; a
-- reader that finds the value it cached under may trust what it cached, any other value
-- drops the cache. Random values, not a counter: a restore brings back an archive's values
-- with the archive's rows, and a counter could then reach a value again with other rows
-- behind it.
CREATE TABLE cache_generations (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
