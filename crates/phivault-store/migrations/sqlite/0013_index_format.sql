-- phivault schema v13: the format of a tenant's blind search index. Format 2 keys the tokens
-- of `_security` (sensitivity labels) per compartment: the compartment's data-key id is part
-- of their HMAC input, so equal labels in two patients' records no longer give equal tokens.
-- A tenant without a row here (an installation from before, or a restored older archive) has
-- its index rebuilt from the sealed resources when the store opens, then gets its row.
CREATE TABLE index_formats (
    tenant TEXT PRIMARY KEY NOT NULL,
    format BIGINT NOT NULL
);
