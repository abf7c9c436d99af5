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
# - Started as root with PYFILTER_REDIS_RUN_AS=redis (the compose files; the
#   official image and the air-gapped one alike), it gives the data folder to
#   that user and the socket's folder to the socket group
#   (PYFILTER_REDIS_SOCKET_GID), then runs Redis as that user with that group:
#   the socket (unixsocketperm 770) is for members of the group only, i.e. the
#   single-host enforcer (group_add), not for everyone. Otherwise (the unit
#   tests) it runs Redis as it is.
set -eu
data=${PYFILTER_REDIS_DATA:-/data}
conf=${PYFILTER_REDIS_CONF:-/etc/pyfilter/redis.conf}
socket_gid=${PYFILTER_REDIS_SOCKET_GID:-6379}
tls_dir=${PYFILTER_REDIS_TLS_DIR:-/etc/pyfilter/tls}

if [ -z "${PYFILTER_REDIS_PASSWORD:-}" ]; then
    echo "redis: PYFILTER_REDIS_PASSWORD is empty; PyFilter's Redis never runs without a password" \
         "(make up and make server generate one)" >&2
    exit 1
fi

acl=$data/users.acl
hash=$(printf '%s' "$PYFILTER_REDIS_PASSWORD" | sha256sum | cut -d' ' -f1)
touch "$acl"
{ grep -v '^user default ' "$acl" || true; echo "user default on #$hash ~* &* +@all"; } > "$acl.new"
mv "$acl.new" "$acl"
set -- redis-server "$conf" --dir "$data" --aclfile "$acl" "$@"

if [ "${PYFILTER_REDIS_TLS:-0}" = 1 ]; then
    for f in server.crt server.key ca.crt; do
        [ -r "$tls_dir/$f" ] || { echo "redis: TLS is on but $tls_dir/$f is missing (make server makes it;" \
                                       "PYFILTER_REDIS_TLS=0 turns TLS off)" >&2; exit 1; }
    done
    if [ -n "${PYFILTER_REDIS_RUN_AS:-}" ]; then  # copies Redis's user alone may read (the folder is root's)
        install -d -o "$PYFILTER_REDIS_RUN_AS" -m 0700 /run/pyfilter-tls
        for f in server.crt server.key ca.crt; do
            install -o "$PYFILTER_REDIS_RUN_AS" -m 0400 "$tls_dir/$f" "/run/pyfilter-tls/$f"
        done
        tls_dir=/run/pyfilter-tls
    fi
    set -- "$@" --tls-port "${PYFILTER_REDIS_TLS_PORT:-6380}" --tls-cert-file "$tls_dir/server.crt" \
        --tls-key-file "$tls_dir/server.key" --tls-ca-cert-file "$tls_dir/ca.crt" --tls-auth-clients no
fi

if [ -n "${PYFILTER_REDIS_RUN_AS:-}" ]; then
    user=$PYFILTER_REDIS_RUN_AS
    mkdir -p "$data/run"
    find "$data" -path "$data/run" -prune -o ! -user "$user" -exec chown "$user" '{}' +
    chown "$user:$socket_gid" "$data/run"
    chmod 0750 "$data/run"
    exec setpriv --reuid="$user" --regid="$socket_gid" --clear-groups "$@"
fi
exec "$@"
