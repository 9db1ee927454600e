-- phivault schema v16: the client address of each audit entry, as an index key.
-- audit_entries.address is the entry's source_address as 32 lowercase hex digits (the 16
-- bytes of the IPv6 address, an IPv4 address IPv4-mapped), so that a network (CIDR) is one
-- range of keys and a breach report by network reads only that network's entries; '' when the
-- entry has no (parsable) address. Copied out of the body like actor and action; rows written
-- before this version are filled in by the audit log when it opens.
ALTER TABLE audit_entries ADD COLUMN address TEXT;
CREATE INDEX audit_entries_address ON audit_entries (address, time);
