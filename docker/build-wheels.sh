#!/usr/bin/env bash
# Fill docker/wheels with every wheel the image needs, built by the same
# Python version as the air-gapped base image (Debian 12's python3), since
# pip inside containers cannot reach the package index here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docker/wheels
stamp=$out/.built-from
want=$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "wheelhouse: up to date"
    exit 0
fi
venv=.cache/wheel-venv
[ -x $venv/bin/pip ] || /usr/bin/python3 -m venv $venv
requirements=$(/usr/bin/python3 -c '
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
find $out -name '*.whl' -delete
# setuptools builds our own package inside the image; mmdb-writer builds the
# default GeoIP database there.
echo "$requirements" | $venv/bin/pip wheel --quiet --wheel-dir $out -r /dev/stdin setuptools mmdb-writer
echo "$want" > "$stamp"
echo "wheelhouse: $(ls $out/*.whl | wc -l) wheels"
