-- phivault schema v2 (PostgreSQL): accounts, tokens, OAuth2 clients, care grants, break-the-glass.
-- No column holds a credential, a username or a break-the-glass reason in the clear: usernames
-- are blind tokens (HMAC under the tenant's index key) with the name itself sealed in
-- profile_sealed; passwords are argon2id PHC strings; TOTP secrets and reasons are sealed with
-- the tenant's directory data key; tokens, client secrets and recovery codes are SHA-256.
CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    username_token BYTEA NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_sealed BYTEA,
    totp_enabled BIGINT NOT NULL DEFAULT 0,
    totp_last_step BIGINT,
    throttle TEXT,
    patient_id TEXT,
    practitioner_id TEXT,
    profile_sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);
CREATE UNIQUE INDEX users_username ON users (tenant, username_token);

CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    code_hash BYTEA NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    client_id TEXT,
    scopes TEXT NOT NULL,
    launch_patient TEXT,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_principal ON tokens (tenant, principal_id);
CREATE INDEX tokens_expires ON tokens (expires_at);

CREATE TABLE oauth_clients (
    client_id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    scopes TEXT NOT NULL,
    launch_patient TEXT,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);

CREATE TABLE care_grants (
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    patient_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (tenant, user_id, patient_id)
);
CREATE INDEX care_grants_patient ON care_grants (tenant, patient_id);

CREATE TABLE break_glass (
    id TEXT PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    patient_id TEXT NOT NULL,
    reason_sealed BYTEA NOT NULL,
    started_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX break_glass_claim ON break_glass (tenant, user_id, patient_id, expires_at);
CREATE INDEX break_glass_started ON break_glass (tenant, started_at);
