#!/usr/bin/env bash
# txevents benchmark (SPEC 6), run by `make bench-pg`.
#
# On a private Postgres cluster (initdb in a temp dir, unix socket only, fsync=off,
# shared_preload_libraries=txevents), side by side in one run:
#   pgbench, 10 s each (BENCH_SECONDS), at 1, 8 and 16 clients, one transaction each,
#   interleaved, BENCH_ROUNDS rounds (default 2), best round kept (other load on the
#   machine only ever lowers TPS):
#     (a) INSERT one row
#     (b) INSERT one row + txevents.emit(...)            (post-commit NOTIFY, mode commit)
#     (c) INSERT one row + INSERT into a plain outbox table + pg_notify (hand-written)
#   poll+ack throughput of one consumer in batches of 100 over 100,000 events;
#   commit-to-listener latency p50/p99 at 1,000 events/s (tests/examples/notify_latency.rs).
# Appends a dated section to bench/RESULTS.md. The cluster is stopped on exit.
#
# Then (issue 9, SPEC 3.2 and 3.4), also appended as sections of their own:
#   notify modes: row + txevents.emit TPS at BENCH_MODE_CLIENTS (1 16 64) clients for
#     txevents.notify = commit, coalesced and off, with durable
#     commits (fsync=on, synchronous_commit=on) and with fsync=off, pgbench -T
#     BENCH_MODE_SECONDS (5), best of BENCH_ROUNDS interleaved rounds;
#   metrics overhead: pgbench's tpcb-like (scale 10) on two clusters, one with
#     shared_preload_libraries=txevents (metrics on) and one without, 1 and 16 clients,
#     -T BENCH_MODE_SECONDS, best of BENCH_OVERHEAD_ROUNDS (3) interleaved rounds.
# BENCH_PARTS (default "emit modes overhead") picks the parts to run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_EACH=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-"1 8 16"}
ROUNDS=${BENCH_ROUNDS:-2}
POLL_EVENTS=${BENCH_POLL_EVENTS:-100000}
LAT_RATE=${BENCH_LATENCY_RATE:-1000}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-10}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}
PARTS=${BENCH_PARTS:-"emit modes overhead"}
MODE_CLIENTS=${BENCH_MODE_CLIENTS:-"1 16 64"}
MODE_SECONDS=${BENCH_MODE_SECONDS:-5}
OVERHEAD_ROUNDS=${BENCH_OVERHEAD_ROUNDS:-3}
PG_BIN=$(/usr/lib/postgresql/15/bin/pg_config --bindir 2>/dev/null || pg_config --bindir)
WORK=$(mktemp -d /tmp/ctx-bench.XXXXXX)
chmod 755 "$WORK"
PG_STARTED=""
PLAIN_STARTED=""

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    local status=$?
    if [ -n "$PG_STARTED" ]; then as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true; fi
    if [ -n "$PLAIN_STARTED" ]; then as_pg "$PG_BIN/pg_ctl" -D "$WORK/plain" -m fast -w stop >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

if [[ " $PARTS " == *" emit "* ]]; then
    echo "==> building the latency probe"
    (cd "$ROOT" && cargo build --release -q -p cachetx-tests --example notify_latency)
fi

PORT=$(free_port)
chown postgres:postgres "$WORK" 2>/dev/null || true
as_pg env -u RUST_BACKTRACE "$PG_BIN/initdb" -D "$WORK/pg" -A trust -E UTF8 --locale=C -U postgres --no-sync >/dev/null
as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -t 60 \
    -o "-p $PORT -k $WORK -c listen_addresses='' -c fsync=off -c max_connections=150 -c shared_preload_libraries=txevents" \
    start >/dev/null
PG_STARTED=1
echo "==> private Postgres on port $PORT (socket in $WORK)"
URL="postgresql://postgres@$(printf '%s' "$WORK" | sed 's|/|%2F|g'):$PORT/bench"
pq() { psql -h "$WORK" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
pq -d postgres -c "CREATE DATABASE bench"
pq -d bench <<'SQL'
CREATE EXTENSION txevents;
CREATE TABLE items (id bigserial PRIMARY KEY, v int NOT NULL);
-- What a user writes by hand instead of txevents: same columns as txevents.outbox.
CREATE TABLE outbox_hand (
    id             bigserial PRIMARY KEY,
    event_type     text        NOT NULL,
    aggregate_type text,
    aggregate_id   text,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    occurred_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
SQL

cat > "$WORK/a.sql" <<'SQL'
\set v random(1, 1000000)
BEGIN;
INSERT INTO items (v) VALUES (:v);
COMMIT;
SQL
cat > "$WORK/b.sql" <<'SQL'
\set v random(1, 1000000)
BEGIN;
INSERT INTO items (v) VALUES (:v);
SELECT txevents.emit('item.created', jsonb_build_object('v', (:v)::int), 'item', (:v)::text);
COMMIT;
SQL
cat > "$WORK/c.sql" <<'SQL'
\set v random(1, 1000000)
BEGIN;
INSERT INTO items (v) VALUES (:v);
WITH e AS (
    INSERT INTO outbox_hand (event_type, aggregate_type, aggregate_id, payload)
    VALUES ('item.created', 'item', (:v)::text, jsonb_build_object('v', (:v)::int)) RETURNING *)
SELECT pg_notify('outbox_hand', row_to_json(e)::text) FROM e;
COMMIT;
SQL

tps_for() { # script clients seconds -> TPS (excluding connection time)
    local jobs=$(( $2 < 2 ? 1 : 2 ))
    pgbench -h "$WORK" -p "$PORT" -U postgres -n -M prepared -T "$3" -c "$2" -j "$jobs" \
        -f "$WORK/$1.sql" bench 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1
}
tps() { tps_for "$1" "$2" "$SECONDS_EACH"; }

ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "n/a" }'; }
PGVER=$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')
MEM=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
[ -f "$RESULTS" ] || printf '# Benchmark results\n\nAppended by `make bench-redis` and `make bench-pg`; newest last. Ratios are what SPEC 6 targets.\n' >"$RESULTS"
machine() {
    printf 'Machine: %s cores (%s), %s RAM, PostgreSQL %s, commit %s.\n' "$(nproc)" "$CPU" "$MEM" "$PGVER" "$(cd "$ROOT" && git rev-parse --short HEAD)"
}

bench_emit() {
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A T
for round in $(seq "$ROUNDS"); do
    for c in $CLIENTS; do
        for s in a b c; do
            pq -d bench -c "TRUNCATE items, outbox_hand; TRUNCATE txevents.outbox" >/dev/null
            pq -d bench -c "CHECKPOINT" >/dev/null
            t=$(tps "$s" "$c")
            printf '   round %s  %-2s clients=%-3s tps=%s\n' "$round" "$s" "$c" "$t"
            T[$s,$c]=$(awk -v a="${T[$s,$c]:-0}" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
        done
    done
done

echo "==> poll+ack: $POLL_EVENTS events, one consumer, batches of 100"
pq -d bench -o /dev/null <<SQL
TRUNCATE txevents.outbox;
SELECT txevents.create_consumer('bench');
SET txevents.notify = off;
SELECT count(txevents.emit('bench.item', jsonb_build_object('i', i), 'item', i::text))
  FROM generate_series(1, $POLL_EVENTS) i;
VACUUM ANALYZE txevents.outbox;
SQL
# Two statements per batch, each its own transaction, as a worker would run them.
cat > "$WORK/pollack.sql" <<'SQL'
SELECT coalesce(array_agg(id), '{}')::text AS ids FROM txevents.poll('bench', 100) \gset
SELECT txevents.ack('bench', :ids::bigint[]);
SQL
BATCHES=$(( (POLL_EVENTS + 99) / 100 ))
START_NS=$(date +%s%N)
pgbench -h "$WORK" -p "$PORT" -U postgres -n -M prepared -c 1 -t "$BATCHES" -f "$WORK/pollack.sql" bench >"$WORK/pollack.out" 2>&1 \
    || { cat "$WORK/pollack.out"; exit 1; }
END_NS=$(date +%s%N)
LEFT=$(pq -d bench -At -c "SELECT count(*) FROM txevents.poll('bench', 100)")
HELD=$(pq -d bench -At -c "SELECT count(*) FROM txevents.claims")
POLL_SECS=$(awk -v s="$START_NS" -v e="$END_NS" 'BEGIN { printf "%.3f", (e - s) / 1e9 }')
POLL_RATE=$(awk -v n="$POLL_EVENTS" -v t="$POLL_SECS" 'BEGIN { printf "%.0f", n / t }')
echo "   $POLL_EVENTS events in ${POLL_SECS}s = $POLL_RATE events/s (left unpolled: $LEFT, claims held: $HELD)"

echo "==> commit-to-listener latency at $LAT_RATE events/s for ${LAT_SECONDS}s, txevents.notify = commit, then coalesced"
pq -d bench -c "TRUNCATE txevents.outbox" >/dev/null
LAT=$("$ROOT/target/release/examples/notify_latency" "$URL" "$LAT_RATE" "$LAT_SECONDS" commit)
echo "   $LAT"
pq -d bench -c "TRUNCATE txevents.outbox" >/dev/null
LAT_COALESCED=$("$ROOT/target/release/examples/notify_latency" "$URL" "$LAT_RATE" "$LAT_SECONDS" coalesced)
echo "   $LAT_COALESCED"
field() { printf '%s\n' "${2:-$LAT}" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

{
    printf '\n## txevents (Postgres), %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    machine
    printf 'Private cluster, unix socket, `fsync=off`, `shared_preload_libraries=txevents`; no listener during the pgbench runs.\n'
    printf 'Command: `make bench-pg` (`scripts/bench-pg.sh`); pgbench `-M prepared -T %s`, `-j 2` above 1 client, best of %s interleaved rounds.\n' "$SECONDS_EACH" "$ROUNDS"
    printf 'Load average (1/5/15 min) before the pgbench runs: %s; at the end: %s (other work on the machine).\n\n' "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '| clients | (a) INSERT TPS | (b) INSERT + txevents.emit TPS | (c) INSERT + outbox + pg_notify TPS | b / c (target >= 1.0) | b / a |\n'
    printf '|---|---|---|---|---|---|\n'
    for c in $CLIENTS; do
        printf '| %s | %.0f | %.0f | %.0f | %s | %s |\n' "$c" "${T[a,$c]}" "${T[b,$c]}" "${T[c,$c]}" \
            "$(ratio "${T[b,$c]}" "${T[c,$c]}")" "$(ratio "${T[b,$c]}" "${T[a,$c]}")"
    done
    printf '\n| measure | result | target |\n|---|---|---|\n'
    printf '| poll+ack, 1 consumer, batches of 100, %s events | %s events/s (%s s) | >= 20,000 events/s (1.5x pgmq 24,000 = 36,000) |\n' "$POLL_EVENTS" "$POLL_RATE" "$POLL_SECS"
    printf '| commit-to-listener latency at %s events/s, `txevents.notify = commit` | p50 %s ms, p90 %s ms, p99 %s ms, max %s ms (%s measured, %s lost) | p99 <= 5 ms |\n' \
        "$LAT_RATE" "$(field p50_ms)" "$(field p90_ms)" "$(field p99_ms)" "$(field max_ms)" "$(field measured)" "$(field lost)"
    printf '| commit-to-listener latency at %s events/s, `txevents.notify = coalesced` | p50 %s ms, p90 %s ms, p99 %s ms, max %s ms (%s measured, %s lost) | p99 <= 10 ms |\n' \
        "$LAT_RATE" "$(field p50_ms "$LAT_COALESCED")" "$(field p90_ms "$LAT_COALESCED")" "$(field p99_ms "$LAT_COALESCED")" "$(field max_ms "$LAT_COALESCED")" "$(field measured "$LAT_COALESCED")" "$(field lost "$LAT_COALESCED")"
} >>"$RESULTS"
echo "==> appended to $RESULTS"
tail -n 16 "$RESULTS"
}

# Row + emit TPS per txevents.notify mode, durable and with fsync off (issue 9).
bench_modes() {
    local load_before durability round c m t
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    declare -A M
    for round in $(seq "$ROUNDS"); do
        for durability in durable nofsync; do
            if [ "$durability" = durable ]; then
                pq -d bench -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" -c "SELECT pg_reload_conf()" >/dev/null
            else
                pq -d bench -c "ALTER SYSTEM SET fsync = off" -c "ALTER SYSTEM SET synchronous_commit = on" -c "SELECT pg_reload_conf()" >/dev/null
            fi
            sleep 1
            for c in $MODE_CLIENTS; do
                for m in commit coalesced off; do
                    pq -d bench -c "TRUNCATE items; TRUNCATE txevents.outbox" >/dev/null
                    pq -d bench -c "CHECKPOINT" >/dev/null
                    t=$(PGOPTIONS="-c txevents.notify=$m" tps_for b "$c" "$MODE_SECONDS")
                    printf '   round %s  %-7s %-6s clients=%-3s tps=%s\n' "$round" "$durability" "$m" "$c" "$t"
                    M[$durability,$m,$c]=$(awk -v a="${M[$durability,$m,$c]:-0}" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
                done
            done
        done
    done
    pq -d bench -c "ALTER SYSTEM RESET fsync" -c "ALTER SYSTEM RESET synchronous_commit" -c "SELECT pg_reload_conf()" >/dev/null
    {
        printf '\n## txevents notify modes (issue 9), %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        machine
        printf 'Private cluster, unix socket, `shared_preload_libraries=txevents`, `max_connections=150`; script (b) of the section above (INSERT one row + `txevents.emit`), `txevents.notify` set per run through PGOPTIONS; no listener. pgbench `-M prepared -T %s`, best of %s interleaved rounds. durable: `fsync=on`, `synchronous_commit=on`; no fsync: `fsync=off`.\n' "$MODE_SECONDS" "$ROUNDS"
        printf 'Load average before: %s; at the end: %s (2 cores shared with other builds and tests: expect noise; rerun with `BENCH_PARTS=modes make bench-pg`).\n' "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
        printf 'Goals (16 clients, durable): coalesced >= 0.90x off and >= 2x commit.\n\n'
        printf '| commits | clients | commit TPS | coalesced TPS | off TPS | coalesced / off | coalesced / commit | commit / off |\n|---|---|---|---|---|---|---|---|\n'
        for durability in durable nofsync; do
            for c in $MODE_CLIENTS; do
                printf '| %s | %s | %.0f | %.0f | %.0f | %s | %s | %s |\n' "$([ "$durability" = durable ] && echo durable || echo 'no fsync')" "$c" \
                    "${M[$durability,commit,$c]}" "${M[$durability,coalesced,$c]}" "${M[$durability,off,$c]}" \
                    "$(ratio "${M[$durability,coalesced,$c]}" "${M[$durability,off,$c]}")" \
                    "$(ratio "${M[$durability,coalesced,$c]}" "${M[$durability,commit,$c]}")" \
                    "$(ratio "${M[$durability,commit,$c]}" "${M[$durability,off,$c]}")"
            done
        done
    } >>"$RESULTS"
    echo "==> appended notify modes to $RESULTS"
}

# pgbench tpcb-like with and without the preloaded metrics hooks (issue 9).
bench_overhead() {
    local plain_port load_before round c t with without url
    plain_port=$(free_port)
    as_pg env -u RUST_BACKTRACE "$PG_BIN/initdb" -D "$WORK/plain" -A trust -E UTF8 --locale=C -U postgres --no-sync >/dev/null
    as_pg env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$WORK/plain" -l "$WORK/plain.log" -w -t 60 \
        -o "-p $plain_port -k $WORK -c listen_addresses='' -c fsync=off -c max_connections=150" start >/dev/null
    PLAIN_STARTED=1
    for p in "$PORT" "$plain_port"; do
        psql -h "$WORK" -p "$p" -U postgres -X -q -d postgres -c "CREATE DATABASE tpcb" >/dev/null
        pgbench -h "$WORK" -p "$p" -U postgres -i -q -s 10 tpcb >/dev/null 2>&1
    done
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    declare -A O
    for round in $(seq "$OVERHEAD_ROUNDS"); do
        for c in 1 16; do
            for with in preload plain; do
                local p=$PORT
                [ "$with" = plain ] && p=$plain_port
                local jobs=$(( c < 2 ? 1 : 2 ))
                t=$(pgbench -h "$WORK" -p "$p" -U postgres -n -M prepared -T "$MODE_SECONDS" -c "$c" -j "$jobs" tpcb 2>&1 \
                    | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
                printf '   round %s  tpcb-like %-7s clients=%-3s tps=%s\n' "$round" "$with" "$c" "$t"
                O[$with,$c]=$(awk -v a="${O[$with,$c]:-0}" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
            done
        done
    done
    {
        printf '\n## txevents metrics overhead (issue 9), %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        machine
        printf 'Two private clusters side by side, same settings (`fsync=off`, unix socket): one with `shared_preload_libraries=txevents` (metrics hooks and shared memory), one without. pgbench default tpcb-like, scale 10, `-M prepared -T %s`, best of %s interleaved rounds.\n' "$MODE_SECONDS" "$OVERHEAD_ROUNDS"
        printf 'Load average before: %s; at the end: %s (2 cores shared with other work: differences of a few %% are within the noise).\n\n' "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
        printf '| clients | with metrics TPS | without TPS | with / without (target >= 0.99) |\n|---|---|---|---|\n'
        for c in 1 16; do
            printf '| %s | %.0f | %.0f | %s |\n' "$c" "${O[preload,$c]}" "${O[plain,$c]}" "$(ratio "${O[preload,$c]}" "${O[plain,$c]}")"
        done
    } >>"$RESULTS"
    echo "==> appended metrics overhead to $RESULTS"
}

for part in $PARTS; do
    case $part in
        emit) bench_emit ;;
        modes) bench_modes ;;
        overhead) bench_overhead ;;
        *) echo "unknown BENCH_PARTS entry: $part" >&2; exit 2 ;;
    esac
done
