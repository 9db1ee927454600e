#!/bin/sh
# Entrypoint of the streaming standby. On its first start (empty data directory) it clones
# the primary with pg_basebackup -R, which writes standby.signal and primary_conninfo (with
# the replication password) into the data directory, and creates the replication slot
# $STANDBY_NAME on the primary. Then the image's own entrypoint finds a data directory and
# runs postgres as a standby.
#
# Cloning again after wiping this volume: drop the old slot on the primary first
# (SELECT pg_drop_replication_slot('standby1');), or pg_basebackup -C fails.
set -eu
: "${PRIMARY_HOST:?}" "${STANDBY_NAME:?}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 0700 "$PGDATA"
    conninfo="host=$PRIMARY_HOST user=replicator application_name=$STANDBY_NAME sslmode=verify-full sslrootcert=/run/secrets/pg-ca"
    until gosu postgres pg_isready -q -d "$conninfo"; do sleep 1; done
    PGPASSWORD="$(cat /run/secrets/pg-replication-password)"
    export PGPASSWORD
    gosu postgres pg_basebackup -d "$conninfo" -D "$PGDATA" \
        --wal-method=stream --write-recovery-conf --create-slot --slot="$STANDBY_NAME" \
        --checkpoint=fast
    unset PGPASSWORD
fi

exec docker-entrypoint.sh "$@"
