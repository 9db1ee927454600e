-- phivault schema v19 (SQLite): login limits shared by every server on the database.
-- The per-address limit and the failed-login counts of usernames that have no account are
-- kept here, not in a server process, so a guess on one node counts on every other. A row is
-- found by a blind token: the HMAC under the tenant's index key of the limited value with a
-- kind of its own (neither the usernames' directory tokens nor search tokens), so no client
-- address and no username that was tried is stored, and the rows cannot be joined with users.
-- The rows are ephemeral: each stops limiting at expires_at and is then deleted, and backups
-- leave both tables out (a limit in force is not worth restoring; a restore keeps those of the
-- database it replaces, which expire on their own).

-- The attempts counted against one client address (an IPv4 address or an IPv6 /64) in the
-- window: their Unix times, space-separated. They are read, decided on and written back in
-- one transaction holding the row, so parallel attempts cannot all pass. expires_at: the
-- newest attempt plus the window.
CREATE TABLE login_address_limits (
    tenant TEXT NOT NULL,
    token BLOB NOT NULL,
    attempts TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, token)
);
CREATE INDEX login_address_limits_expires ON login_address_limits (tenant, expires_at);

-- Failed logins to a username without an account, counted and locked like an account's
-- (users.failed_logins, users.locked_until) in one statement, so that the two answer alike.
-- expires_at: a day after the last counted attempt (and never before the lock ends).
CREATE TABLE login_unknown_names (
    tenant TEXT NOT NULL,
    token BLOB NOT NULL,
    failures BIGINT NOT NULL,
    locked_until BIGINT,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, token)
);
CREATE INDEX login_unknown_names_expires ON login_unknown_names (tenant, expires_at);
