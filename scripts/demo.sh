#!/usr/bin/env bash
# The cachetx demo: a cached candidate profile with per-namespace stats in Redis,
# and a domain event published only after COMMIT in Postgres.
#
# Starts a private redis-server with the module and a private Postgres cluster with
# the extension, each on a free port in its own temp dir, and stops both on exit.
# Set REDIS_HOST/REDIS_PORT[/REDIS_DB/REDIS_PASSWORD] or DATABASE_URL to use
# existing servers instead (the module / extension must be available there).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE=${NSCACHE_MODULE:-$ROOT/target/release/libnscache.so}
PG_BIN=$(/usr/lib/postgresql/15/bin/pg_config --bindir 2>/dev/null || pg_config --bindir)
WORK=$(mktemp -d /tmp/cachetx-demo.XXXXXX)
chmod 755 "$WORK"
REDIS_PID=""
PG_STARTED=""

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
    local status=$?
    if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
    if [ -n "$PG_STARTED" ]; then as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true; fi
    [ -n "${LISTENER_PID:-}" ] && kill "$LISTENER_PID" 2>/dev/null || true
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# ---------------------------------------------------------------- Redis
if [ -n "${REDIS_HOST:-}${REDIS_PORT:-}" ]; then
    RHOST=${REDIS_HOST:-127.0.0.1}; RPORT=${REDIS_PORT:-6379}
    echo "==> using Redis at $RHOST:$RPORT (db ${REDIS_DB:-0})"
else
    [ -f "$MODULE" ] || { echo "module not built: $MODULE (run: make build)" >&2; exit 1; }
    RHOST=127.0.0.1; RPORT=$(free_port)
    mkdir -p "$WORK/redis"
    redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORK/redis" --save "" --appendonly no \
        --loadmodule "$MODULE" --logfile "$WORK/redis/redis.log" --daemonize no &
    REDIS_PID=$!
    for _ in $(seq 100); do redis-cli -h $RHOST -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    echo "==> started redis-server with nscache on port $RPORT"
fi
[ -n "${REDIS_PASSWORD:-}" ] && export REDISCLI_AUTH=$REDIS_PASSWORD
rcli() { redis-cli -h "$RHOST" -p "$RPORT" -n "${REDIS_DB:-0}" "$@"; }
say() { printf '\n$ %s\n' "$*"; }
run_redis() { say "redis-cli $*"; rcli "$@"; }

echo; echo "=== nscache: a cached candidate profile ==="
run_redis NSCACHE.RESETSTATS candidates >/dev/null 2>&1 || true
run_redis NSCACHE.DEL candidates 42
run_redis NSCACHE.SET candidates 42 300 '{"id":42,"name":"Ada Lovelace","status":"interview"}'
run_redis NSCACHE.GET candidates 42
run_redis NSCACHE.GET candidates 42
run_redis NSCACHE.GET candidates 43
run_redis NSCACHE.KEYNAME candidates 42
run_redis NSCACHE.STATS candidates

# ---------------------------------------------------------------- Postgres
if [ -n "${DATABASE_URL:-}" ]; then
    PGURL=$DATABASE_URL
    echo; echo "==> using Postgres at DATABASE_URL"
else
    PGPORT=$(free_port)
    chown postgres:postgres "$WORK" 2>/dev/null || true
    as_pg "$PG_BIN/initdb" -D "$WORK/pg" -A trust -E UTF8 --locale=C -U postgres --no-sync >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -t 60 \
        -o "-p $PGPORT -k $WORK -c listen_addresses=''" start >/dev/null
    PG_STARTED=1
    PGURL="postgresql://postgres@/postgres?host=$WORK&port=$PGPORT"
    echo; echo "==> started a private Postgres on port $PGPORT (socket in $WORK)"
fi
pq() { psql "$PGURL" -v ON_ERROR_STOP=1 -X -q "$@"; }
pq -c "CREATE EXTENSION IF NOT EXISTS txevents"
pq -c "CREATE TABLE IF NOT EXISTS demo_candidates (id int PRIMARY KEY, name text)" \
   -c "CREATE TABLE IF NOT EXISTS demo_done (done bool)" -c "TRUNCATE demo_done"

echo; echo "=== txevents: an event published only after COMMIT ==="
# The listener waits for the demo_done marker, then prints what it received.
(pq -c "LISTEN txevents" -c "DO \$\$ BEGIN WHILE NOT EXISTS (SELECT FROM demo_done) LOOP PERFORM pg_sleep(0.05); END LOOP; END \$\$" \
   > "$WORK/listener.out" 2>&1) &
LISTENER_PID=$!
sleep 0.5
say 'BEGIN; INSERT INTO demo_candidates ...; SELECT txevents.emit('"'"'candidate.created'"'"', ...); COMMIT;'
pq -c "BEGIN" -c "INSERT INTO demo_candidates VALUES (42, 'Ada Lovelace') ON CONFLICT (id) DO NOTHING" \
   -c "SELECT txevents.emit('candidate.created', '{\"id\":42,\"name\":\"Ada Lovelace\"}', 'candidate', '42') AS event_id" \
   -c "COMMIT"
say 'BEGIN; SELECT txevents.emit('"'"'candidate.rejected'"'"', ...); ROLLBACK;'
pq -c "BEGIN" -c "SELECT txevents.emit('candidate.rejected', '{\"id\":42}', 'candidate', '42') AS event_id" -c "ROLLBACK"
pq -c "INSERT INTO demo_done VALUES (true)"
wait "$LISTENER_PID"; LISTENER_PID=""
echo; echo "The listener received:"
grep -i 'notification' "$WORK/listener.out" || echo "(nothing)"
received=$(grep -c 'Asynchronous notification' "$WORK/listener.out" || true)
if grep -q 'candidate.rejected' "$WORK/listener.out"; then
    echo "FAIL: the rolled-back event was published" >&2; exit 1
fi
if [ "$received" != 1 ]; then echo "FAIL: expected 1 notification, got $received" >&2; exit 1; fi
echo; echo "One notification for the committed event; none for the rolled-back one."
pq -c "DROP TABLE demo_candidates, demo_done"
