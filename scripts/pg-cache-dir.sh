#!/usr/bin/env bash
# Usage: scripts/pg-cache-dir.sh CHECKOUT
#
# Prints where `make deps` keeps the PostgreSQL 16-18 trees: CHECKOUT/.pg (git-ignored)
# normally. As root, the tests run the server as `postgres`, which must be able to
# traverse every directory down to those binaries; a checkout under a private directory
# (e.g. /root) is not, so the trees then go to /var/cache/cachetx/pg instead of failing
# in initdb later. The trees are read-only for the tests, so sharing them is safe.
set -euo pipefail
checkout=${1:?usage: $0 CHECKOUT}
if [[ $(id -u) == 0 ]] && id postgres >/dev/null 2>&1 &&
    ! runuser -u postgres -- test -x "$checkout" 2>/dev/null; then
    echo /var/cache/cachetx/pg
else
    echo "$checkout/.pg"
fi
