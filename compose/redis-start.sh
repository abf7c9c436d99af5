#!/bin/sh
# Start PyFilter's Redis (every stack: docker-compose.yml, server.yml).
# - Never without a password: the admin user (`default`) gets
#   PYFILTER_REDIS_PASSWORD, written into the ACL file at every start, since
#   an ACL file without a `default` line would leave that user with no password
#   at all. The file (users.acl in the data folder) keeps the users
#   `pyfilter server` makes (ACL SAVE), so a restart keeps them.
# - TLS on port 6380 when PYFILTER_REDIS_TLS=1, with the server certificate
#   and key from PYFILTER_REDIS_TLS_DIR (server.crt, server.key, ca.crt):
#   compose/tls.sh makes them. Plain 6379 stays for the server's own services
#   on the compose network; only the TLS port is published (server.yml).
# - With Sentinel (server-ha.yml): PYFILTER_REDIS_TLS_ONLY=1 closes the plain
#   port and replicates over TLS; PYFILTER_REPLICA_REDIS_PASSWORD makes the
#   replication link's user (pyfilter-replica: PSYNC, REPLCONF, PING; a node
#   that becomes a replica logs in as it) and PYFILTER_SENTINEL_REDIS_PASSWORD
#   the sentinels' user (pyfilter-sentinel: what Sentinel sends a node), both
#   written into the ACL file at every start, like `default`, so they are
#   there before any replica or sentinel connects.
# - With Sentinel, PYFILTER_REDIS_SENTINELS (HOST:PORT of each sentinel): before
#   it serves anyone, the node takes the users `pyfilter server` made from the
#   current primary (the list's one owner, docs/decisions.md), so a node that
#   was down while a host was added or removed does not come back with the old
#   users. With no primary answering (the first start; or this node is the
#   primary the sentinels name) it keeps the users of its own ACL file.
# - With Redis Cluster (server-cluster.yml): PYFILTER_REDIS_TLS_ONLY=1 as with
#   Sentinel (the cluster bus over TLS too); the cluster options come as arguments.
#   PYFILTER_REDIS_USERS_FROM (HOST:PORT of the other nodes, the users' owner
#   first: the node `pyfilter server` writes first, docs/decisions.md): before it
#   serves anyone, the node takes the users from the owner; if the owner does not
#   answer, from the other nodes when all that answer hold the same; otherwise (the
#   first start; the owner itself, which has it unset) it keeps its own ACL file.
# - Started as root with PYFILTER_REDIS_RUN_AS=redis (the compose files; the
#   official image and the air-gapped one alike), it gives the data folder to
#   that user and the socket's folder to the socket group
#   (PYFILTER_REDIS_SOCKET_GID), then runs Redis as that user with that group:
#   the socket (unixsocketperm 770) is for members of the group only, i.e. the
#   single-host enforcer (group_add), not for everyone. Otherwise (the unit
#   tests) it runs Redis as it is.
set -eu
. "$(dirname "$0")/redis-lib.sh"
data=${PYFILTER_REDIS_DATA:-/data}
conf=${PYFILTER_REDIS_CONF:-/etc/pyfilter/redis.conf}
socket_gid=${PYFILTER_REDIS_SOCKET_GID:-6379}

if [ -z "${PYFILTER_REDIS_PASSWORD:-}" ]; then
    echo "redis: PYFILTER_REDIS_PASSWORD is empty; PyFilter's Redis never runs without a password" \
         "(make up and make server generate one)" >&2
    exit 1
fi

if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
    tls_files "${PYFILTER_REDIS_TLS_DIR:-/etc/pyfilter/tls}"
fi

# The primary's users, as the sentinels name it: the first sentinel that names one decides.
primary_users() {
    for sentinel in ${PYFILTER_REDIS_SENTINELS:-}; do
        # shellcheck disable=SC2046  # the reply is two words: host and port
        set -- $(ask "$sentinel" SENTINEL GET-MASTER-ADDR-BY-NAME pyfilter || true)
        if [ $# = 2 ]; then
            users_of "$1:$2"
            return
        fi
    done
    return 1
}

# The users of the cluster's owner (the first of PYFILTER_REDIS_USERS_FROM) or, with the
# owner down, those every other node that answers holds.
cluster_users() {
    [ -n "${PYFILTER_REDIS_USERS_FROM:-}" ] || return 1
    # shellcheck disable=SC2086  # HOST:PORT words
    set -- $PYFILTER_REDIS_USERS_FROM
    users_of "$1" && return
    owner=$1 agreed="" answered=0
    shift
    for node in "$@"; do
        held=$(users_of "$node") || continue
        held=$(printf '%s\n' "$held" | sort)
        if [ "$answered" = 1 ] && [ "$held" != "$agreed" ]; then
            echo "redis: the users' owner $owner does not answer and the other nodes" \
                 "disagree: keeping this node's own users (pyfilter server init brings it in step)" >&2
            return 1
        fi
        agreed=$held answered=1
    done
    [ "$answered" = 1 ] && printf '%s\n' "$agreed"
}

acl=$data/users.acl
touch "$acl"
{
    if users=$(primary_users) || users=$(cluster_users); then
        printf '%s\n' "$users" | grep -v '^$' || true
    else
        grep -Ev '^user (default|pyfilter-replica|pyfilter-sentinel) ' "$acl" || true
    fi
    acl_line default "$PYFILTER_REDIS_PASSWORD" "~* &* +@all"
    if [ -n "${PYFILTER_REPLICA_REDIS_PASSWORD:-}" ]; then
        acl_line pyfilter-replica "$PYFILTER_REPLICA_REDIS_PASSWORD" "resetchannels -@all +psync +replconf +ping"
    fi
    if [ -n "${PYFILTER_SENTINEL_REDIS_PASSWORD:-}" ]; then
        acl_line pyfilter-sentinel "$PYFILTER_SENTINEL_REDIS_PASSWORD" \
            "resetchannels &__sentinel__:hello -@all +multi +exec +slaveof +replicaof +ping +subscribe +publish +info +role +config|rewrite +client|setname +client|kill +script|kill"
    fi
} > "$acl.new"
mv "$acl.new" "$acl"
set -- redis-server "$conf" --dir "$data" --aclfile "$acl" "$@"
if [ -n "${PYFILTER_REPLICA_REDIS_PASSWORD:-}" ]; then
    set -- "$@" --masteruser pyfilter-replica --masterauth "$PYFILTER_REPLICA_REDIS_PASSWORD"
fi

if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
    # shellcheck disable=SC2046  # tls_options is words, no path has a space
    set -- "$@" --tls-port "${PYFILTER_REDIS_TLS_PORT:-6380}" $(tls_options)
    if [ "${PYFILTER_REDIS_TLS_ONLY:-0}" = 1 ]; then
        # tls-cluster: the cluster bus too, when the node is in a cluster (server-cluster.yml).
        set -- "$@" --port 0 --tls-replication yes --tls-cluster yes
    fi
fi

run_as_redis "$data" "$socket_gid" "$@"
