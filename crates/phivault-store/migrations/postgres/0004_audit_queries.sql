-- phivault schema v4 (postgres): audit queries and incremental verification.
-- action (the FHIR AuditEvent action code C/R/U/D/E) and outcome (allowed/denied/error) are
-- copied out of each entry's body, like actor and patient, so that AuditEvent searches filter
-- in SQL; the body stays authoritative (readers re-check it). Rows written before v4 have
-- NULLs until the audit log fills them in at open.
-- audit_checkpoints.frontier keeps the Merkle frontier (the roots of the perfect subtrees) at
-- each checkpoint, so verification can resume from the last checkpoint instead of re-hashing
-- the whole trail; a frontier is checked against the signed root before it is trusted.
ALTER TABLE audit_entries ADD COLUMN action TEXT;
ALTER TABLE audit_entries ADD COLUMN outcome TEXT;
CREATE INDEX audit_entries_time ON audit_entries (time);
ALTER TABLE audit_checkpoints ADD COLUMN frontier BYTEA;
