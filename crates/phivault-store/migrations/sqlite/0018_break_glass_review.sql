-- phivault schema v18 (SQLite): the review of break-the-glass accesses.
-- A review is written once (reviewed_at is set by a compare-and-set on NULL) with who
-- reviewed and their note. The note may describe the patient, like the claim's reason: it is
-- sealed with the tenant's directory data key, bound (associated data) to the tenant, the
-- claim (id, claimant, patient), the reviewer and the review time, so it opens only on its
-- own review. Rows from before this version, and claims not yet reviewed, have all three NULL.
-- Erasing the patient deletes the claim and its review with it.
ALTER TABLE break_glass ADD COLUMN reviewed_at BIGINT;
ALTER TABLE break_glass ADD COLUMN reviewer_id TEXT REFERENCES users (user_id);
ALTER TABLE break_glass ADD COLUMN review_note_sealed BLOB;
CREATE INDEX break_glass_review ON break_glass (tenant, reviewed_at);
