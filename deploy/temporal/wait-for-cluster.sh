#!/bin/sh
# Sourced by the one-shot jobs: waits until the Temporal frontend answers a health check.
# Sets TEMPORAL_RESOLVED_ADDRESS; the CLI is given an IPv4 address because service names may
# resolve to an IPv6 address the frontend does not listen on.
TEMPORAL_HOST="${TEMPORAL_ADDRESS%:*}"
TEMPORAL_PORT="${TEMPORAL_ADDRESS##*:}"
TEMPORAL_IP="$(getent ahosts "$TEMPORAL_HOST" 2>/dev/null | awk '$1 ~ /^[0-9.]+$/ { print $1; exit }')"
TEMPORAL_RESOLVED_ADDRESS="${TEMPORAL_IP:-$TEMPORAL_HOST}:$TEMPORAL_PORT"
MAX_WAIT_ATTEMPTS="${MAX_WAIT_ATTEMPTS:-60}"

attempt=1
until temporal operator cluster health --address "$TEMPORAL_RESOLVED_ADDRESS" >/dev/null 2>&1; do
    if [ "$attempt" -ge "$MAX_WAIT_ATTEMPTS" ]; then
        echo "Temporal at $TEMPORAL_ADDRESS did not become healthy after $attempt health checks" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 2
done
echo "Temporal at $TEMPORAL_ADDRESS is healthy"
