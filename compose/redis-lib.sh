# Shared by redis-start.sh and sentinel.sh (sourced, never run): TLS files
# and dropping root, the same way for a data node and a sentinel.

# tls_files DIR: check DIR has server.crt, server.key and ca.crt; started as
# root with PYFILTER_REDIS_RUN_AS, copy them where that user alone may read
# them (the folder is root's). Sets $tls_dir to where Redis reads them.
tls_files() {
    tls_dir=$1
    for f in server.crt server.key ca.crt; do
        [ -r "$tls_dir/$f" ] || { echo "redis: TLS is on but $tls_dir/$f is missing (make server makes it;" \
                                       "PYFILTER_REDIS_TLS=0 turns TLS off)" >&2; exit 1; }
    done
    if [ -n "${PYFILTER_REDIS_RUN_AS:-}" ]; then
        install -d -o "$PYFILTER_REDIS_RUN_AS" -m 0700 /run/pyfilter-tls
        for f in server.crt server.key ca.crt; do
            install -o "$PYFILTER_REDIS_RUN_AS" -m 0400 "$tls_dir/$f" "/run/pyfilter-tls/$f"
        done
        tls_dir=/run/pyfilter-tls
    fi
}

# tls_options: Redis's TLS settings for the files tls_files found (clients
# need no certificate of their own: they authenticate with a password).
tls_options() {
    echo "--tls-cert-file $tls_dir/server.crt --tls-key-file $tls_dir/server.key" \
         "--tls-ca-cert-file $tls_dir/ca.crt --tls-auth-clients no"
}

# acl_line USER PASSWORD RULES: one user of an ACL file (or sentinel.conf), the
# password as its SHA-256, as services/common/acl.py writes them.
acl_line() {
    echo "user $1 on #$(printf '%s' "$2" | sha256sum | cut -d' ' -f1) $3"
}

# run_as_redis DATA GID CMD...: started as root with PYFILTER_REDIS_RUN_AS,
# give DATA (but DATA/run) to that user and DATA/run to group GID, then run CMD
# as that user with that group; otherwise (the unit tests) run CMD as it is.
run_as_redis() {
    data=$1 gid=$2
    shift 2
    if [ -n "${PYFILTER_REDIS_RUN_AS:-}" ]; then
        user=$PYFILTER_REDIS_RUN_AS
        mkdir -p "$data/run"
        find "$data" -path "$data/run" -prune -o ! -user "$user" -exec chown "$user" '{}' +
        chown "$user:$gid" "$data/run"
        chmod 0750 "$data/run"
        exec setpriv --reuid="$user" --regid="$gid" --clear-groups "$@"
    fi
    exec "$@"
}

# ask HOST:PORT COMMAND...: one command to a node or sentinel as the admin
# (PYFILTER_REDIS_PASSWORD), over TLS with $tls_dir/ca.crt (tls_files) when
# PYFILTER_REDIS_TLS=1, 5 s at most; the reply on stdout.
ask() {
    where=$1
    shift
    set -- -h "${where%:*}" -p "${where##*:}" "$@"
    if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
        set -- --tls --cacert "$tls_dir/ca.crt" "$@"
    fi
    REDISCLI_AUTH=$PYFILTER_REDIS_PASSWORD timeout 5 redis-cli "$@" 2>/dev/null
}

# users_of HOST:PORT: the users HOST holds (ACL LIST), but those each node or
# sentinel makes itself at its start; fails if HOST gives no list.
users_of() {
    listed=$(ask "$1" ACL LIST) || return 1
    printf '%s\n' "$listed" | grep -q '^user default ' || return 1
    printf '%s\n' "$listed" | grep -Ev '^user (default|pyfilter-replica|pyfilter-sentinel|pyfilter-sentinel-peer) ' || true
}
