#!/bin/sh
# One-shot: the namespace the engine runs in, created once with its history retention.
set -eu

: "${TEMPORAL_ADDRESS:?}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${TEMPORAL_NAMESPACE_RETENTION:-30d}"
. "$(dirname "$0")/wait-for-cluster.sh"

if temporal operator namespace describe --namespace "$NAMESPACE" --address "$TEMPORAL_RESOLVED_ADDRESS" >/dev/null 2>&1; then
    echo "namespace $NAMESPACE exists"
else
    temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION" \
        --address "$TEMPORAL_RESOLVED_ADDRESS"
    echo "created namespace $NAMESPACE (retention $RETENTION)"
fi
