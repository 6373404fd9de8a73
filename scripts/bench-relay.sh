#!/usr/bin/env bash
# Relay benchmark (SPEC 6): commit -> invalidated-in-Redis latency at 1,000
# invalidations/s through one `cachetx relay`, and the invalidations/s one relay
# sustains draining a backlog. Real servers (redis-server with nscache, a private
# Postgres with txevents), the release binary; appends a dated section to
# bench/RESULTS.md. Short runs: the machine's cores are shared with the servers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RESULTS=$ROOT/bench/RESULTS.md
cd "$ROOT"

cargo build --release -p cachetx-cli
export CACHETX_BIN=$ROOT/target/release/cachetx
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
BENCH_OUT=$OUT cargo test -p cachetx-tests --test cli_bench -- --ignored --nocapture --test-threads=1

mkdir -p "$(dirname "$RESULTS")"
[ -f "$RESULTS" ] || printf '# Benchmark results\n\nAppended by the make bench targets; newest last.\n' > "$RESULTS"
{
    printf '\n## relay, %s (commit %s)\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf 'Machine: %s cores, redis-server %s, PostgreSQL %s (fsync off), loopback; one `cachetx relay` (release).\n' \
        "$(nproc)" "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
        "$(/usr/lib/postgresql/15/bin/postgres --version 2>/dev/null | awk '{print $3}')"
    printf 'Latency: from sending COMMIT to receiving the `cache.invalidated` message nscache publishes after the relay'"'"'s NSCACHE.DEL (`nscache.publish-invalidations yes`); the relay is woken by LISTEN.\n\n'
    cat "$OUT"
} | tee -a "$RESULTS"
