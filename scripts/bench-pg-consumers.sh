#!/usr/bin/env bash
# Consumer-group scaling benchmark (issue 10), run by `make bench-pg` after
# scripts/bench-pg.sh.
#
# On a private Postgres cluster (fsync=off, max_connections=300, preload txevents),
# side by side in one run: drain rate (events/s) of one txevents consumer group and of
# one pgmq 1.13.0 queue, W workers (pgbench clients) each running one statement per
# batch that takes a batch and acks it:
#   txevents: SELECT txevents.ack('g', array(SELECT id FROM txevents.poll('g', B)))
#   pgmq:     SELECT count(*) FROM pgmq.delete('q', array(SELECT msg_id FROM pgmq.read('q', 30, B)))
# for W in BENCH_WORKERS (default 1 16 64 128 256) and B in 16 and 100; and a txevents
# ordered group (ordered => true) over BENCH_AGGREGATES (10,000) distinct aggregate ids.
# Each point runs BENCH_CONSUMER_SECONDS (default 5) on a backlog that does not run dry
# (checked: a point that drained everything is marked as a lower bound).
#
# pgmq is a benchmark dependency only: its SQL (src/install/embedded/sql/pgmq.sql of
# the `pgmq` crate 0.34.0-alpha.7, which ships pgmq 1.13.0) comes from crates.io through
# `cargo fetch` into a throwaway project, and loads as plain SQL.
#
# Server binaries: BENCH_PG_BINDIR (default Debian's PostgreSQL 15); txevents must be
# installed there (`make build/pg PG=NN`). Appends a dated section to bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_EACH=${BENCH_CONSUMER_SECONDS:-5}
WORKERS=${BENCH_WORKERS:-"1 16 64 128 256"}
BATCHES=${BENCH_BATCHES:-"16 100"}
BACKLOG=${BENCH_BACKLOG:-300000}
AGGREGATES=${BENCH_AGGREGATES:-10000}
ORDERED_WORKERS=${BENCH_ORDERED_WORKERS:-"16 128"}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}
PGMQ_CRATE=0.34.0-alpha.7
PG_BIN=${BENCH_PG_BINDIR:-$(/usr/lib/postgresql/15/bin/pg_config --bindir 2>/dev/null || pg_config --bindir)}
WORK=$(mktemp -d /tmp/ctx-cbench.XXXXXX)
chmod 755 "$WORK"
PG_STARTED=""

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    local status=$?
    if [ -n "$PG_STARTED" ]; then as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

echo "==> pgmq $PGMQ_CRATE from crates.io (cargo fetch)"
mkdir -p "$WORK/pgmq-fetch/src"
printf '[package]\nname = "pgmq-fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\npgmq = "=%s"\n' \
    "$PGMQ_CRATE" >"$WORK/pgmq-fetch/Cargo.toml"
echo 'fn main() {}' >"$WORK/pgmq-fetch/src/main.rs"
(cd "$WORK/pgmq-fetch" && cargo fetch -q)
PGMQ_SQL=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/pgmq-$PGMQ_CRATE/src/install/embedded/sql/pgmq.sql | head -n1)
[ -f "$PGMQ_SQL" ] || { echo "pgmq.sql not found after cargo fetch" >&2; exit 1; }
cp "$PGMQ_SQL" "$WORK/pgmq.sql"
chmod 644 "$WORK/pgmq.sql"

PORT=$(free_port)
chown postgres:postgres "$WORK" 2>/dev/null || true
as_pg env -u RUST_BACKTRACE "$PG_BIN/initdb" -D "$WORK/pg" -A trust -E UTF8 --locale=C -U postgres --no-sync >/dev/null
as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -t 60 \
    -o "-p $PORT -k $WORK -c listen_addresses='' -c fsync=off -c max_connections=300 -c shared_preload_libraries=txevents" \
    start >/dev/null
PG_STARTED=1
VERSION=$(as_pg "$PG_BIN/postgres" --version)
echo "==> private $VERSION on port $PORT"
pq() { "$PG_BIN/psql" -h "$WORK" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
pq -d postgres -c "CREATE DATABASE bench"
pq -d bench -c "CREATE EXTENSION txevents; SET txevents.notify = off" >/dev/null
pq -d bench -f "$WORK/pgmq.sql" >/dev/null
pq -d bench -c "SELECT pgmq.create('q')" >/dev/null

# One txevents group per point, all created before the backlog: each sees all of it.
POINTS=()
for b in $BATCHES; do for w in $WORKERS; do POINTS+=("$b:$w"); done; done
echo "==> backlog: $BACKLOG events for ${#POINTS[@]} txevents groups (fan-out) and the ordered ones"
{
    for p in "${POINTS[@]}"; do echo "SELECT txevents.create_consumer('g_${p/:/_}');"; done
    for w in $ORDERED_WORKERS; do echo "SELECT txevents.create_consumer('o_$w', ordered => true);"; done
    echo "SET txevents.notify = off;"
    echo "SELECT count(txevents.emit('bench.item', jsonb_build_object('i', i), 'item', (i % $AGGREGATES)::text)) FROM generate_series(1, $BACKLOG) i;"
    echo "VACUUM ANALYZE txevents.outbox;"
} | pq -d bench -o /dev/null

# Keeps pgmq's queue at BACKLOG messages before each point.
pgmq_fill() {
    pq -d bench -o /dev/null -c "
        SELECT pgmq.send_batch('q', array_agg(jsonb_build_object('i', i)))
          FROM generate_series(1, $BACKLOG - (SELECT count(*) FROM pgmq.q_q)) i
         HAVING count(*) > 0" -c "VACUUM ANALYZE pgmq.q_q"
}

# run NAME SCRIPT WORKERS -> events/s, from pgbench's transaction count x batch
run() {
    local name=$1 script=$2 w=$3 batch=$4
    local jobs=$(( w < 8 ? w : 8 ))
    pgbench -h "$WORK" -p "$PORT" -U postgres -n -M prepared -c "$w" -j "$jobs" -T "$SECONDS_EACH" \
        -f "$script" bench >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; exit 1; }
    local tx
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/$name.out")
    awk -v t="$tx" -v b="$batch" -v s="$SECONDS_EACH" 'BEGIN { printf "%.0f", t * b / s }'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
ROWS=()
for p in "${POINTS[@]}"; do
    b=${p%%:*}; w=${p##*:}; g="g_${b}_${w}"
    printf "SELECT txevents.ack('%s', array(SELECT id FROM txevents.poll('%s', %s)));\n" "$g" "$g" "$b" >"$WORK/tx_$g.sql"
    TX=$(run "tx_$g" "$WORK/tx_$g.sql" "$w" "$b")
    LEFT=$(pq -d bench -At -c "SELECT count(*) FROM txevents.poll('$g', 1)")
    [ "$LEFT" = 0 ] && TX=">=$TX (drained)"
    pgmq_fill
    printf "SELECT count(*) FROM pgmq.delete('q', array(SELECT msg_id FROM pgmq.read('q', 30, %s)));\n" "$b" >"$WORK/mq_$b.sql"
    MQ=$(run "mq_${b}_$w" "$WORK/mq_$b.sql" "$w" "$b")
    MQ_LEFT=$(pq -d bench -At -c "SELECT count(*) FROM pgmq.q_q")
    [ "$MQ_LEFT" = 0 ] && MQ=">=$MQ (drained)"
    echo "   batch $b, $w workers: txevents $TX events/s, pgmq $MQ events/s"
    ROWS+=("| $b | $w | $TX | $MQ |")
done
ORDERED=()
for w in $ORDERED_WORKERS; do
    g="o_$w"
    printf "SELECT txevents.ack('%s', array(SELECT id FROM txevents.poll('%s', 16)));\n" "$g" "$g" >"$WORK/tx_$g.sql"
    # The first poll of an ordered group reads the whole backlog into its lanes.
    pq -d bench -o /dev/null -c "SELECT txevents.ack('$g', array(SELECT id FROM txevents.poll('$g', 16)))"
    OX=$(run "tx_$g" "$WORK/tx_$g.sql" "$w" 16)
    echo "   ordered, $AGGREGATES aggregates, batch 16, $w workers: $OX events/s"
    ORDERED+=("| ordered, $AGGREGATES aggregates, batch 16 | $w | $OX |")
done

{
    echo
    echo "## Consumer groups vs pgmq, $(date -u +%Y-%m-%dT%H:%MZ) ($VERSION)"
    echo
    echo "scripts/bench-pg-consumers.sh: private cluster, fsync=off, $(nproc) cores shared"
    echo "with other work, ${SECONDS_EACH} s per point, one run, backlog $BACKLOG events; pgmq $PGMQ_CRATE"
    echo "crate's pgmq.sql (1.13.0). Drain rate = pgbench transactions x batch / time."
    echo "Load average before: $LOAD_BEFORE; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| batch | workers | txevents events/s | pgmq events/s |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "| ordered group | workers | txevents events/s |"
    echo "|---|---|---|"
    printf '%s\n' "${ORDERED[@]}"
} >>"$RESULTS"
echo "==> appended to $RESULTS"
