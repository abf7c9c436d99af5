#!/bin/sh
# The group id that may read this host's journal (systemd-journal, whose id
# differs between distributions), taken from the journal folders themselves;
# nothing when there is no journal, or when its group is root's or adm (4,
# which the collector has anyway).
# Usage: compose/journal-gid.sh [LOG_DIR]   (default /var/log)
for dir in "${1:-/var/log}/journal" /run/log/journal; do
    gid=$(stat -c %g "$dir" 2>/dev/null) || continue
    if [ "$gid" != 0 ] && [ "$gid" != 4 ]; then
        echo "$gid"
        exit 0
    fi
done
