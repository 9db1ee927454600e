-- phivault schema v17 (PostgreSQL): SMART App Launch (authorization code with PKCE, refresh
-- tokens, private_key_jwt client authentication, EHR launch contexts, remembered consent,
-- OpenID Connect id_tokens).
-- Nothing here holds a credential in the clear: authorization codes and launch handles are
-- SHA-256 hashes (like tokens); the id_token signing keys are sealed with the tenant's
-- directory data key, bound to tenant, key id, algorithm and public key; client JWKS hold
-- public keys only.

-- Client types: NULL in rows from before this version means 'confidential-secret'.
-- redirect_uris: exact-match URIs, one per line. jwks: the public keys of a
-- 'confidential-jwt' client (JSON); jwks_url: where they were fetched from at registration
-- (recorded only: the server never fetches).
ALTER TABLE oauth_clients ADD COLUMN client_type TEXT;
ALTER TABLE oauth_clients ADD COLUMN redirect_uris TEXT;
ALTER TABLE oauth_clients ADD COLUMN jwks TEXT;
ALTER TABLE oauth_clients ADD COLUMN jwks_url TEXT;

-- family: the authorization-code grant a token descends from (its access and refresh tokens
-- share it, so a replayed code or refresh token revokes them all); encounter: the launch
-- encounter.
ALTER TABLE tokens ADD COLUMN family TEXT;
ALTER TABLE tokens ADD COLUMN encounter TEXT;
CREATE INDEX tokens_family ON tokens (tenant, family);
-- Revoking an app's authorization revokes the user's tokens bound to that client; the
-- (tenant, principal_id) lookups use the prefix of this index too.
DROP INDEX tokens_principal;
CREATE INDEX tokens_principal ON tokens (tenant, principal_id, client_id);

-- Authorization codes, one use each: used_at is set once (compare-and-set), and a code
-- presented again answers as a replay.
CREATE TABLE oauth_codes (
    code_hash BYTEA PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scopes TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    launch_patient TEXT,
    launch_encounter TEXT,
    nonce TEXT,
    family TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX oauth_codes_expires ON oauth_codes (expires_at);
CREATE INDEX oauth_codes_patient ON oauth_codes (tenant, launch_patient);

-- The ids (jti) of client assertions already accepted, kept until the assertion could no
-- longer be accepted, so that none is accepted twice.
CREATE TABLE oauth_jtis (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, client_id, jti)
);
CREATE INDEX oauth_jtis_expires ON oauth_jtis (expires_at);

-- EHR launch contexts: the opaque launch parameter (hashed) names a patient and encounter.
CREATE TABLE smart_launches (
    launch_hash BYTEA PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    encounter_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX smart_launches_expires ON smart_launches (expires_at);
CREATE INDEX smart_launches_patient ON smart_launches (tenant, patient_id);

-- What a user allowed an app (the scopes of their last consent), until revoked.
CREATE TABLE oauth_authorizations (
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (tenant, user_id, client_id)
);

-- The id_token signing keys: private_sealed is the DER of the private key, sealed.
CREATE TABLE oidc_signing_keys (
    tenant TEXT NOT NULL,
    kid TEXT NOT NULL,
    alg TEXT NOT NULL,
    private_sealed BYTEA NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    PRIMARY KEY (tenant, kid)
);
