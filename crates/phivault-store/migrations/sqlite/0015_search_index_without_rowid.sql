-- phivault schema v15 (SQLite): the blind search index as a WITHOUT ROWID table, keyed by
-- its primary key. As a rowid table each token was stored three times: in the table, in the
-- primary key's automatic index (which every search reads) and in the per-resource index
-- (which updates and deletions read). Clustered on the primary key, the table is that index:
-- a third less to write and keep (the index is most of the database: about seventy tokens per
-- Observation). Same columns, same keys, same rows.
CREATE TABLE search_index_clustered (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    token BLOB NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (tenant, rtype, token, id)
) WITHOUT ROWID;
INSERT INTO search_index_clustered (tenant, rtype, token, id)
    SELECT tenant, rtype, token, id FROM search_index;
DROP TABLE search_index;
ALTER TABLE search_index_clustered RENAME TO search_index;
CREATE INDEX search_index_resource ON search_index (tenant, rtype, id);
