#!/bin/sh
# Start one sentinel of server-ha.yml. Sentinel rewrites its own file (the
# current primary, the other sentinels, its id, the users `pyfilter server`
# gives it), so the file is written once, at the first start, and kept in the
# sentinel's volume: a restarted sentinel carries on from what it knew, not
# from the primary of the first day. What comes from the environment is
# written again at every start (a changed password or TLS setting holds):
# - the admin password (requirepass: for the admin only; no link uses it),
#   PYFILTER_REDIS_PASSWORD;
# - how it logs in to the nodes: as pyfilter-sentinel with
#   PYFILTER_SENTINEL_REDIS_PASSWORD (redis-start.sh makes that user);
# - how the sentinels log in to each other: as pyfilter-sentinel-peer with
#   PYFILTER_SENTINEL_PEER_REDIS_PASSWORD, a user every sentinel holds with
#   what one sentinel sends another and nothing else: PING, the hello
#   messages (PUBLISH on __sentinel__:hello) and the vote (SENTINEL
#   IS-MASTER-DOWN-BY-ADDR); no key, no SENTINEL SET, FAILOVER or CONFIG;
# - TLS only, on its port, to clients, nodes and other sentinels alike, when
#   PYFILTER_REDIS_TLS=1 (the files as for redis-start.sh).
# And the users `pyfilter server` gives every sentinel (each node user, with the
# one right to ask where the primary is), taken before it serves anyone from
# another sentinel of PYFILTER_REDIS_SENTINELS (HOST:PORT of each; itself is
# skipped as it does not answer yet): a sentinel that was down while a host
# was added or removed does not come back with the old users. With none
# answering (the first start), it keeps those of its file.
# Started as root with PYFILTER_REDIS_RUN_AS=redis, it runs as that user.
#   $1  the port it listens on (and announces); any more: redis-server's options
set -eu
. "$(dirname "$0")/redis-lib.sh"
data=${PYFILTER_REDIS_DATA:-/data}
conf=$data/sentinel.conf
: "${PYFILTER_REDIS_PASSWORD:?the sentinels need the admin password}"
: "${PYFILTER_SENTINEL_REDIS_PASSWORD:?the sentinels need their own user's password (make server generates it)}"
: "${PYFILTER_SENTINEL_PEER_REDIS_PASSWORD:?the sentinels need a user among themselves (make server generates its password)}"
if [ ! -f "$conf" ]; then
    primary=${PYFILTER_REDIS_ANNOUNCE:-redis}
    cat > "$conf" <<CONF
# The nodes are known by name (or PYFILTER_REDIS_ANNOUNCE), and given out so:
# a node keeps its address when its container is recreated.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
# Two of the three sentinels must agree that the primary is down.
sentinel monitor pyfilter $primary ${PYFILTER_REDIS_PRIMARY_PORT:-6379} 2
# Down after 5 s without an answer: a failover then takes a few seconds more
# (docs/scaling.md, "Redis that survives losing a node").
sentinel down-after-milliseconds pyfilter ${PYFILTER_SENTINEL_DOWN_AFTER_MS:-5000}
sentinel failover-timeout pyfilter 60000
sentinel parallel-syncs pyfilter 1
CONF
fi
if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
    tls_files "${PYFILTER_REDIS_TLS_DIR:-/etc/pyfilter/tls}"
fi
kept='^(port|tls-[a-z-]+|requirepass|user (default|pyfilter-sentinel-peer)|sentinel (auth|sentinel)-(user|pass)) '
users=
for peer in ${PYFILTER_REDIS_SENTINELS:-}; do
    if users=$(users_of "$peer"); then
        kept='^(port|tls-[a-z-]+|requirepass|user|sentinel (auth|sentinel)-(user|pass)) '
        break
    fi
done
grep -Ev "$kept" "$conf" > "$conf.new" || true
{
    printf '%s\n' "$users" | grep -v '^$' || true
    echo "requirepass \"$PYFILTER_REDIS_PASSWORD\""
    echo "sentinel auth-user pyfilter pyfilter-sentinel"
    echo "sentinel auth-pass pyfilter \"$PYFILTER_SENTINEL_REDIS_PASSWORD\""
    acl_line pyfilter-sentinel-peer "$PYFILTER_SENTINEL_PEER_REDIS_PASSWORD" \
        "resetchannels &__sentinel__:hello -@all +auth +client|setname +ping +publish +sentinel|is-master-down-by-addr"
    echo "sentinel sentinel-user pyfilter-sentinel-peer"
    echo "sentinel sentinel-pass \"$PYFILTER_SENTINEL_PEER_REDIS_PASSWORD\""
    if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
        echo "port 0"
        echo "tls-port $1"
        tls_options | sed 's/ --/\n/g; s/^--//'
        echo "tls-replication yes"
    else
        echo "port $1"
    fi
} >> "$conf.new"
mv "$conf.new" "$conf"
port=$1
shift
run_as_redis "$data" "$(id -g "${PYFILTER_REDIS_RUN_AS:-$(id -un)}")" redis-server "$conf" --sentinel "$@"
