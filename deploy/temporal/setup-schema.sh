#!/bin/sh
# One-shot: create Temporal's two databases and bring their schemas to the version this image ships.
# Safe to run on every `docker compose up`: an existing database is only updated.
set -eu

: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?set TEMPORAL_DB_PASSWORD in .env}"
DB_PORT="${DB_PORT:-5432}"
SCHEMA_ROOT=/etc/temporal/schema/postgresql/v12

sql_tool() {
    # The password reaches the tool through SQL_PASSWORD, never through argv.
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" "$@"
}

setup_database() {
    database="$1"
    schema_dir="$2"
    if sql_tool --db "$database" create-database; then
        echo "created database $database"
        sql_tool --db "$database" setup-schema -v 0.0
    else
        echo "database $database exists: updating its schema"
    fi
    sql_tool --db "$database" update-schema -d "$SCHEMA_ROOT/$schema_dir/versioned"
}

setup_database "${DBNAME:-temporal}" temporal
setup_database "${VISIBILITY_DBNAME:-temporal_visibility}" visibility
echo "Temporal schemas are up to date"
