-- phivault schema v1 (SQLite). No column holds PHI in the clear: resource bodies are sealed,
-- search values are blind tokens, data-key owners are blind tokens.
CREATE TABLE key_encryption_keys (
    kek_id TEXT PRIMARY KEY NOT NULL,
    wrapped BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    active BIGINT NOT NULL
);

CREATE TABLE data_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    owner BLOB NOT NULL,
    kek_id TEXT NOT NULL REFERENCES key_encryption_keys (kek_id),
    wrapped BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX data_keys_owner ON data_keys (tenant, kind, owner);

CREATE TABLE resource_versions (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    sealed BLOB NOT NULL,
    deleted BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, rtype, id, version)
);

CREATE TABLE current_resources (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    deleted BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, rtype, id)
);
CREATE INDEX current_resources_key ON current_resources (key_id);

CREATE TABLE search_index (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    token BLOB NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (tenant, rtype, token, id)
);
CREATE INDEX search_index_resource ON search_index (tenant, rtype, id);
