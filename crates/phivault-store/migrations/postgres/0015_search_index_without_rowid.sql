-- phivault schema v15: on SQLite the blind search index becomes a WITHOUT ROWID table (see
-- the SQLite migration). PostgreSQL keeps tables as heaps beside their indexes whatever the
-- declaration; nothing changes here, and the version stays the same on both backends.
SELECT 1;
