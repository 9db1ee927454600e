-- phivault schema v12: login failures counted in one atomic statement. Every password check
-- on an account first claims an attempt with a single UPDATE that increments failed_logins
-- and, from the fifth failure, sets locked_until, only while the account is not locked; so
-- parallel guesses cannot read a stale count and slip past the lock. A complete login sets
-- both back. The JSON `throttle` column is no longer written (kept so that older archives
-- still restore); its state is not carried over: every account starts unlocked.
ALTER TABLE users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;
UPDATE users SET throttle = NULL;
