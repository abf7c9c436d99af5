#!/bin/sh
# The shared Redis's TLS files (make server runs it): a CA of this deployment
# and a server certificate it signs, for the names and addresses agents use
# to reach the server. Agents verify the server against ca.crt, name included.
#   compose/tls.sh DIR NAME...   (NAME: a DNS name or an IP address)
# Files already in DIR are kept: the operator's own certificate and key
# (server.crt, server.key, and the ca.crt that signed it) are used as they are,
# and a CA made before keeps signing, so agents' copies of ca.crt stay good
# (a certificate it signed that lacks a NAME is made again, by the same CA).
# The certificate also serves as a client's: on Redis Cluster's bus
# (server-cluster.yml) each node shows it to the others, which check it.
set -eu
dir=$1
shift
[ $# -gt 0 ] || { echo "usage: $0 DIR NAME..." >&2; exit 2; }
command -v openssl >/dev/null || { echo "tls.sh: openssl is missing (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 0700 "$dir"
cd "$dir"
umask 077

# Whether server.crt names every NAME (a name added later, e.g. the nodes of `make server HA=1`)
# and may also be a client's (one made before Cluster was a server profile was a server's only).
names_all() {
    openssl x509 -in server.crt -noout -ext extendedKeyUsage | grep -q 'Client Authentication' || return 1
    for name in "$@"; do
        if printf '%s' "$name" | grep -Eq '^[0-9.]+$|:'; then check=-checkip; else check=-checkhost; fi
        openssl x509 -in server.crt -noout "$check" "$name" | grep -q 'does match' || return 1
    done
}

if [ -f server.crt ] && [ -f server.key ]; then
    [ -f ca.crt ] || { echo "tls.sh: $dir has server.crt but no ca.crt (the CA that signed it)" >&2; exit 1; }
    if names_all "$@"; then
        echo "TLS: using the server certificate in $dir"
        exit 0
    fi
    if [ ! -f ca.key ]; then  # the operator's own: theirs to extend
        echo "TLS: warning: the server certificate in $dir does not name all of: $* (clients that use" \
             "a name it lacks will refuse it), or is not for client authentication too (server-cluster.yml" \
             "needs that)" >&2
        exit 0
    fi
    echo "TLS: the server certificate in $dir lacks some of: $* (or client authentication);" \
         "making a new one with the same CA"
fi
if [ ! -f ca.key ]; then
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \
        -subj "/CN=PyFilter CA $(hostname)" -keyout ca.key -out ca.crt 2>/dev/null
fi
san=""
for name in "$@"; do
    if printf '%s' "$name" | grep -Eq '^[0-9.]+$|:'; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$1" \
    -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "${san#,}" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext
chmod 0644 ca.crt server.crt
echo "TLS: made a CA and a server certificate for ${san#,} in $dir (agents get ca.crt)"
