#!/usr/bin/env bash
# Build the air-gapped base image from Debian packages: no container registry
# needed, only the Debian mirror this machine's apt already uses.
# Usage: docker/build-base.sh [IMAGE]   (default pyfilter-base:bookworm-4; bump the
# suffix whenever the packages or the layout below change, so hosts rebuild it)
set -euo pipefail
image=${1:-pyfilter-base:bookworm-4}
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image: present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

# The mirror comes from the machine's own apt sources, never from this repo.
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)
[ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -n1)
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
# systemd: journalctl, with which the collector reads the host's journal.
packages=python3,python3-venv,ca-certificates,nftables,iptables,iproute2,redis-server,procps,systemd
echo "debootstrap bookworm from $mirror (about a minute)"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >/dev/null
# Redis keeps its append-only file in /data; a named volume mounted there
# inherits this ownership, so redis can run as its own user.
mkdir -p "$rootfs/data/run" && chroot "$rootfs" chown -R redis:redis /data
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import - "$image" >/dev/null
echo "$image: built"
