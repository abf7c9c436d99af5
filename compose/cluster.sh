#!/bin/sh
# Make the Redis Cluster of server-cluster.yml, or bring an existing one
# together again; run at every start of the stack (its `cluster` one-shot),
# so it must change nothing that is already right.
# - Nodes that know no other node and hold no slot: a new cluster, the slots
#   split evenly over them (redis-cli --cluster create, no replicas).
# - Otherwise the cluster exists (each node keeps it in nodes.conf, in its
#   volume, with the data): each node is told every other's current address
#   (CLUSTER MEET). The cluster bus is joined by IP address, and a container
#   recreated by `docker compose up` may get a new one on the server's
#   network: a node met at a new address it already knows by id only has its
#   address updated, so the cluster and its data carry on.
# Then it waits until the cluster answers (cluster_state:ok).
#   compose/cluster.sh HOST:PORT...   every node as this container reaches it
# As admin (REDISCLI_AUTH), over TLS when PYFILTER_REDIS_TLS=1 (the CA in
# PYFILTER_REDIS_TLS_DIR, default /etc/pyfilter/tls).
set -eu
[ $# -gt 0 ] || { echo "usage: $0 HOST:PORT..." >&2; exit 2; }
tls=""
if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
    tls="--tls --cacert ${PYFILTER_REDIS_TLS_DIR:-/etc/pyfilter/tls}/ca.crt"
fi
timeout=${PYFILTER_CLUSTER_TIMEOUT:-60}

# cli HOST:PORT ARGS...: redis-cli against one node.
cli() {
    node=$1
    shift
    # shellcheck disable=SC2086  # $tls is words, no path has a space
    redis-cli --no-auth-warning $tls -h "${node%:*}" -p "${node##*:}" "$@"
}

# info HOST:PORT FIELD: one field of the node's CLUSTER INFO.
info() {
    cli "$1" CLUSTER INFO | tr -d '\r' | sed -n "s/^$2://p"
}

# address HOST:PORT: the node's IP:PORT (CLUSTER MEET and --cluster create take IP addresses).
address() {
    host=${1%:*}
    ip=$(getent hosts "$host" | awk 'NR == 1 {print $1}')
    [ -n "$ip" ] || { echo "cluster: cannot resolve $host" >&2; exit 1; }
    echo "$ip:${1##*:}"
}

waited=0
for node in "$@"; do
    until [ "$(cli "$node" PING 2>/dev/null)" = PONG ]; do
        [ "$waited" -lt "$timeout" ] || { echo "cluster: $node does not answer" >&2; exit 1; }
        sleep 1
        waited=$((waited + 1))
    done
done

fresh=1
for node in "$@"; do
    if [ "$(info "$node" cluster_known_nodes)" != 1 ] || [ "$(info "$node" cluster_slots_assigned)" != 0 ]; then
        fresh=0
    fi
done

addresses=""
for node in "$@"; do
    addresses="$addresses $(address "$node")"
done
if [ "$fresh" = 1 ]; then
    echo "cluster: creating it on$addresses"
    # shellcheck disable=SC2086
    redis-cli --no-auth-warning $tls --cluster create $addresses --cluster-replicas 0 --cluster-yes
else
    for node in "$@"; do
        for other in $addresses; do
            cli "$node" CLUSTER MEET "${other%:*}" "${other##*:}" >/dev/null
        done
    done
fi

for node in "$@"; do
    until [ "$(info "$node" cluster_state)" = ok ]; do
        [ "$waited" -lt "$timeout" ] || {
            echo "cluster: $node is not in a working cluster after ${timeout}s (cluster_state" \
                 "$(info "$node" cluster_state)); see: redis-cli --cluster check $(address "$node")" >&2
            exit 1
        }
        sleep 1
        waited=$((waited + 1))
    done
done
echo "cluster: ok ($# primaries)"
