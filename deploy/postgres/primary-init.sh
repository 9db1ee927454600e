#!/bin/sh
# First start of the primary (run once by the postgres image, from
# /docker-entrypoint-initdb.d/, against its temporary init server): the replication and
# phivault roles, phivault's database, TLS-only client authentication and synchronous
# replication to the standby. Passwords are read from the compose secrets, never from argv.
set -eu

psql -v ON_ERROR_STOP=1 --no-password --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\set repl_pw `cat /run/secrets/pg-replication-password`
\set app_pw `cat /run/secrets/pg-phivault-password`
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl_pw';
CREATE ROLE phivault WITH LOGIN PASSWORD :'app_pw';
CREATE DATABASE phivault OWNER phivault;
-- A commit is acknowledged only once the standby has it on disk: a failover then loses no
-- acknowledged write, audit entry or erasure (docs/deploy.md). Set with ALTER SYSTEM so it
-- applies from the real start on: the init server has no standby to wait for.
ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (standby1)';
SQL

# Only TLS connections with a password from the network; the superuser only on the socket.
cat > "$PGDATA/pg_hba.conf" <<'HBA'
# TYPE  DATABASE     USER        ADDRESS  METHOD
local   all          postgres             peer
hostssl replication  replicator  all      scram-sha-256
hostssl phivault     phivault    all      scram-sha-256
HBA
