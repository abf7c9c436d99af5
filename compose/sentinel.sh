#!/bin/sh
# Start one sentinel of server-ha.yml. Sentinel rewrites its own file (the
# current primary, the other sentinels, its id), so the file is written once,
# at the first start, and kept in the sentinel's volume: a restarted sentinel
# carries on from what it knew, not from the primary of the first day.
#   $1  the port it listens on (and announces)
set -eu
conf=/data/sentinel.conf
if [ ! -f "$conf" ]; then
    primary=${PYFILTER_REDIS_ANNOUNCE:-redis}
    cat > "$conf" <<CONF
port $1
# The nodes are known by name (or PYFILTER_REDIS_ANNOUNCE), and given out so:
# a node keeps its address when its container is recreated.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
requirepass "$PYFILTER_REDIS_PASSWORD"
# Two of the three sentinels must agree that the primary is down.
sentinel monitor pyfilter $primary 6379 2
sentinel auth-pass pyfilter "$PYFILTER_REDIS_PASSWORD"
# Down after 5 s without an answer: a failover then takes a few seconds more
# (docs/scaling.md, "Redis that survives losing a node").
sentinel down-after-milliseconds pyfilter 5000
sentinel failover-timeout pyfilter 60000
sentinel parallel-syncs pyfilter 1
CONF
fi
exec redis-server "$conf" --sentinel
