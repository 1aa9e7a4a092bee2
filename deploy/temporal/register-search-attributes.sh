#!/bin/sh
# One-shot: the custom search attributes the order workflows set, so the UI can filter by them
# (StrategyId="..." AND OrderStatus="OPEN"). Registers only what is missing, so re-runs are no-ops.
set -eu

: "${TEMPORAL_ADDRESS:?}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
SEARCH_ATTRIBUTES="StrategyId UserId OrderType OrderStatus Symbol BrokerOrderId ExitReason"
. "$(dirname "$0")/wait-for-cluster.sh"

list_attributes() {
    temporal operator search-attribute list --namespace "$NAMESPACE" --address "$TEMPORAL_RESOLVED_ADDRESS" \
        --output json
}

# A namespace created moments ago reaches the frontend's cache some seconds later.
attempt=1
until registered="$(list_attributes 2>/dev/null)"; do
    if [ "$attempt" -ge 30 ]; then
        list_attributes >/dev/null
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 2
done

for name in $SEARCH_ATTRIBUTES; do
    if printf '%s' "$registered" | grep -q "\"$name\""; then
        echo "search attribute $name exists"
    else
        temporal operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type Keyword \
            --address "$TEMPORAL_RESOLVED_ADDRESS"
        echo "registered search attribute $name (Keyword)"
    fi
done

registered="$(list_attributes)"
for name in $SEARCH_ATTRIBUTES; do
    if ! printf '%s' "$registered" | grep -q "\"$name\""; then
        echo "search attribute $name is still missing in namespace $NAMESPACE" >&2
        exit 1
    fi
done
echo "search attributes registered in namespace $NAMESPACE: $SEARCH_ATTRIBUTES"
