#!/bin/sh
# First start of an empty data volume only: one role and database for the engine, one role for
# Temporal (it creates its own two databases in the schema job). Least privilege: neither is superuser.
set -eu

: "${ENGINE_DB_PASSWORD:?set ENGINE_DB_PASSWORD in .env}"
: "${TEMPORAL_DB_PASSWORD:?set TEMPORAL_DB_PASSWORD in .env}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v engine_password="$ENGINE_DB_PASSWORD" \
    -v temporal_password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE engine LOGIN PASSWORD :'engine_password';
CREATE DATABASE engine OWNER engine;
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
SQL
