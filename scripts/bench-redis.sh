#!/usr/bin/env bash
# make bench-redis: nscache side by side with plain Redis (a second redis-server
# without nscache) and the Lua script a user would write instead, pipelined
# (redis-benchmark -P 16 -c 50), then the lease benchmark (stampede and hot key,
# tests/src/bin/lease_bench.rs). Appends a dated section to bench/RESULTS.md.
#
# With two cores or more, the servers run on core 0 and redis-benchmark on
# core 1 (taskset), so neither steals the other's core. When a C compiler is
# there, bench/floor/floor.c (the cheapest reads and writes any module can
# serve, see there) is built and loaded into the plain server, as a yardstick
# for the module API's own cost.
#
# Knobs: BENCH_REQUESTS (default 2000000), BENCH_KEYS (100000),
# BENCH_INVALIDATE_KEYS (1000000), BENCH_VALUE_BYTES (64), BENCH_ROUNDS (5: the
# throughput runs are repeated in interleaved rounds, and the median of each
# per-round ratio reported), BENCH_LEASES (1; 0 skips the lease benchmark),
# BENCH_RESULTS (the file appended to, bench/RESULTS.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE=${NSCACHE_MODULE:-$ROOT/target/release/libnscache.so}
REQUESTS=${BENCH_REQUESTS:-2000000}
KEYS=${BENCH_KEYS:-100000}
BIG=${BENCH_INVALIDATE_KEYS:-1000000}
VALUE_BYTES=${BENCH_VALUE_BYTES:-64}
ROUNDS=${BENCH_ROUNDS:-5}
LEASES=${BENCH_LEASES:-1}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}
WORK=$(mktemp -d /tmp/cachetx-bench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
PORT=$(free_port)
PLAIN_PORT=$(free_port)
REDIS_PID="" PLAIN_PID=""

cleanup() {
    [ -n "$REDIS_PID" ] && { kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
    [ -n "$PLAIN_PID" ] && { kill "$PLAIN_PID" 2>/dev/null || true; wait "$PLAIN_PID" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ -f "$MODULE" ] || { echo "module not built: $MODULE (run: make build)" >&2; exit 1; }
SERVER_CPU=() CLIENT_CPU=() pinning="client and server share the machine's cores"
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1)
    pinning="redis-server pinned to core 0, redis-benchmark to core 1"
fi
# The yardstick module, when it can be built (the header comes with the
# redis-module crate the build already fetched).
FLOOR=() floor_header=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*redis-module-*' -name redismodule.h 2>/dev/null | head -1 || true)
if [ -n "$floor_header" ] && command -v cc >/dev/null \
    && cc -O2 -fPIC -shared -I"$(dirname "$floor_header")" -o "$WORK/floor.so" "$ROOT/bench/floor/floor.c" 2>"$WORK/floor.err"; then
    FLOOR=(--loadmodule "$WORK/floor.so")
else
    echo "    (bench/floor/floor.c not built, the floor rows are skipped: $(head -c 300 "$WORK/floor.err" 2>/dev/null))"
fi
"${SERVER_CPU[@]}" redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK" --save "" --appendonly no \
    --loadmodule "$MODULE" --logfile "$WORK/redis.log" &
REDIS_PID=$!
# Plain Redis is a second server without nscache, on the same core: the
# module's command filter and keyspace-event subscription cost every command
# of its own server something, which the "plain, nscache server" rows show.
# The yardstick module goes there too, so it pays none of nscache's costs.
mkdir -p "$WORK/plain"
"${SERVER_CPU[@]}" redis-server --port "$PLAIN_PORT" --bind 127.0.0.1 --dir "$WORK/plain" --save "" \
    --appendonly no "${FLOOR[@]}" --logfile "$WORK/plain.log" &
PLAIN_PID=$!
rc() { redis-cli -p "$PORT" "$@"; }
for _ in $(seq 100); do redis-cli -p "$PLAIN_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 100); do rc ping >/dev/null 2>&1 && break; sleep 0.1; done

VALUE=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' v)
BENCH=("${CLIENT_CPU[@]}" redis-benchmark -P 16 -c 50 -n "$REQUESTS" -r "$KEYS" -q)

# Loads inline commands produced by awk through redis-cli --pipe.
pipe_load() { awk "$1" | rc --pipe >/dev/null; }

rps() { # runs one redis-benchmark command on the nscache server, prints requests per second
    rps_on "$PORT" "$@"
}
rps_on() { # the same on the server listening on port $1, after an unmeasured warm-up
    local port=$1
    shift
    # A tenth of the requests first, so the measured run does not pay for
    # caches the previous run (maybe on the other server) left cold.
    "${CLIENT_CPU[@]}" redis-benchmark -P 16 -c 50 -n $((REQUESTS / 10 + 1)) -r "$KEYS" -q -p "$port" "$@" >/dev/null 2>&1 || true
    "${BENCH[@]}" -p "$port" "$@" 2>/dev/null | tr '\r' '\n' | awk '/requests per second/ {for (i=1;i<=NF;i++) if ($(i+1) ~ /^requests/) v=$i} END {print v+0}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
used_memory() { rc info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}'; }
cmd_usec() { rc info commandstats | tr -d '\r' | awk -F'[=,:]' -v c="cmdstat_$1" '$1 == c {print $5}'; }

# redis-benchmark's __rand_int__ is a 12-digit zero-padded number: preload the same names.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> preloading $KEYS keys (plain strings and nscache entries)"
pipe_load "BEGIN { for (i = 0; i < $KEYS; i++) printf \"SET key:%012d $VALUE EX 3600\r\n\", i }"
# The plain server holds as many keys as the nscache server (fill:* stand for
# the nscache entries, floor:* for the yardstick's), loaded in the same order,
# so both look keys up in tables of the same size and the key:* values lie as
# close together in memory on both (interleaving them with the others spread
# them over three times the memory and made plain GET ~10% slower).
for set in key: 'fill:{' 'floor:{'; do
    close=''; [ "$set" = key: ] || close='}'
    awk "BEGIN { for (i = 0; i < $KEYS; i++) printf \"SET $set%012d$close $VALUE EX 3600\r\n\", i }" \
        | redis-cli -p "$PLAIN_PORT" --pipe >/dev/null
done
pipe_load "BEGIN { for (i = 0; i < $KEYS; i++) printf \"NSCACHE.SET bench %012d 3600 $VALUE\r\n\", i }"
pipe_load "BEGIN { for (i = 0; i < $KEYS; i++) printf \"SET floor:{%012d} $VALUE EX 3600\r\n\", i }"

LUA='local v = redis.call("GET", KEYS[1])
if v then redis.call("HINCRBY", KEYS[2], "hits", 1) else redis.call("HINCRBY", KEYS[2], "misses", 1) end
redis.call("ZINCRBY", KEYS[3], 1, ARGV[1])
return v'
SHA=$(redis-cli -p "$PLAIN_PORT" script load "$LUA")

echo "==> throughput ($REQUESTS requests, -P 16 -c 50, $ROUNDS interleaved rounds)"
# Each round runs plain and nscache back to back, so both see the same machine;
# each ratio is taken within a round, and its median over the rounds reported.
rounds_file=$WORK/rounds
# The runs of a round, in order; even rounds run them backwards, so a drift of
# the machine's speed during a round does not always favour the same side.
RUNS=(gp gm gn fn sp sm sn lp)
[ ${#FLOOR[@]} -gt 0 ] && RUNS+=(fg fs fw)
measure() { # one run, by its short name
    case $1 in
        gp) rps_on "$PLAIN_PORT" GET key:__rand_int__ ;;
        gm) rps GET key:__rand_int__ ;;
        gn) rps NSCACHE.GET bench __rand_int__ ;;
        fn) rps NSCACHE.FETCH bench __rand_int__ 1000 ;;
        sp) rps_on "$PLAIN_PORT" SET key:__rand_int__ "$VALUE" EX 3600 ;;
        sm) rps SET key:__rand_int__ "$VALUE" EX 3600 ;;
        sn) rps NSCACHE.SET bench __rand_int__ 3600 "$VALUE" ;;
        lp) rps_on "$PLAIN_PORT" EVALSHA "$SHA" 3 key:__rand_int__ stats:bench hot:bench __rand_int__ ;;
        fg) rps_on "$PLAIN_PORT" FLOOR.GET key:__rand_int__ ;;
        fs) rps_on "$PLAIN_PORT" FLOOR.NSGET floor __rand_int__ ;;
        fw) rps_on "$PLAIN_PORT" FLOOR.NSSET floor __rand_int__ 3600 "$VALUE" ;;
    esac
}
for round in $(seq "$ROUNDS"); do
    declare -A got=([fg]=0 [fs]=0 [fw]=0)
    order=("${RUNS[@]}")
    if [ $((round % 2)) = 0 ]; then
        order=()
        for ((i = ${#RUNS[@]} - 1; i >= 0; i--)); do order+=("${RUNS[$i]}"); done
    fi
    for run in "${order[@]}"; do got[$run]=$(measure "$run"); done
    gp=${got[gp]} gm=${got[gm]} gn=${got[gn]} fn=${got[fn]} sp=${got[sp]} sm=${got[sm]} sn=${got[sn]} fg=${got[fg]} fs=${got[fs]} fw=${got[fw]} lp=${got[lp]}
    echo "$gp $gn $fn $sp $sn $fg $fs $gm $sm $fw $lp" >> "$rounds_file"
    line="    round $round: GET $gp / $gn ($(ratio "$gn" "$gp")), FETCH $fn ($(ratio "$fn" "$gp")), SET $sp / $sn ($(ratio "$sn" "$sp")), plain on the nscache server: GET $(ratio "$gm" "$gp"), SET $(ratio "$sm" "$sp")"
    [ ${#FLOOR[@]} -gt 0 ] && line+=", floor GET $(ratio "$fg" "$gp"), NSGET $(ratio "$fs" "$gp"), NSSET $(ratio "$fw" "$sp")"
    echo "$line"
done
# Medians of each ratio over the rounds (each round's plain run is its own baseline).
median_ratio() { # column of the numerator, column of the denominator
    awk -v a="$1" -v b="$2" '$b > 0 {print $a / $b}' "$rounds_file" | sort -g \
        | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
median_of() {
    awk -v c="$1" '{print $c}' "$rounds_file" | sort -g \
        | awk '{v[NR] = $1} END {if (NR % 2) printf "%d", v[(NR + 1) / 2]; else printf "%d", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
get_plain=$(median_of 1) get_ns=$(median_of 2) fetch_ns=$(median_of 3) set_plain=$(median_of 4) set_ns=$(median_of 5)
floor_get=$(median_of 6) floor_nsget=$(median_of 7) get_mod=$(median_of 8) set_mod=$(median_of 9)
r_get=$(median_ratio 2 1) r_fetch=$(median_ratio 3 1) r_set=$(median_ratio 5 4)
r_floor_get=$(median_ratio 6 1) r_floor_nsget=$(median_ratio 7 1)
r_get_mod=$(median_ratio 8 1) r_set_mod=$(median_ratio 9 4)
floor_nsset=$(median_of 10) r_floor_nsset=$(median_ratio 10 4)
all_rounds=$(awk '$1 > 0 && $4 > 0 {printf "%s%.2f/%.2f/%.2f", (NR > 1 ? "; " : ""), $2/$1, $3/$1, $5/$4}' "$rounds_file")
get_lua=$(median_of 11) r_lua=$(median_ratio 2 11)
ns_stats=$(rc nscache.stats bench json)

echo "==> NSCACHE.INVALIDATE of $BIG entries vs SCAN MATCH + UNLINK"
rc flushall >/dev/null
pipe_load "BEGIN { for (i = 0; i < $BIG; i++) printf \"NSCACHE.SET big %d 3600 $VALUE\r\n\", i }"
rc config resetstat >/dev/null
rc nscache.invalidate big >/dev/null
inv_usec=$(cmd_usec nscache.invalidate)
# Wait for the background sweep to give the memory back before the next step.
for _ in $(seq 600); do
    rc info nscache | tr -d '\r' | grep -q '^nscache_sweep_pending:0' && [ "$(rc dbsize)" = 0 ] && break
    sleep 0.1
done
pipe_load "BEGIN { for (i = 0; i < $BIG; i++) printf \"SET plain:{%d} $VALUE EX 3600\r\n\", i }"
rc config resetstat >/dev/null
scan_start=$(date +%s%N)
rc --scan --pattern 'plain:*' | xargs -d '\n' -n 1000 redis-cli -p "$PORT" unlink >/dev/null
scan_wall_ms=$(( ($(date +%s%N) - scan_start) / 1000000 ))
scan_usec=$(( $(cmd_usec scan || echo 0) + $(cmd_usec unlink || echo 0) ))

echo "==> memory per entry ($BIG entries, ${VALUE_BYTES}-byte values, ttl set)"
rc flushall >/dev/null; sleep 0.5
m0=$(used_memory)
pipe_load "BEGIN { for (i = 0; i < $BIG; i++) printf \"SET mem:{%d} $VALUE EX 3600\r\n\", i }"
m1=$(used_memory)
rc flushall >/dev/null; sleep 0.5
m2=$(used_memory)
pipe_load "BEGIN { for (i = 0; i < $BIG; i++) printf \"NSCACHE.SET mem %d 3600 $VALUE\r\n\", i }"
m3=$(used_memory)
plain_per=$(( (m1 - m0) / BIG ))
ns_per=$(( (m3 - m2) / BIG ))
ns_bytes_stat=$(rc nscache.stats mem json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')

redis_version=$(rc info server | tr -d '\r' | awk -F: '/^redis_version:/ {print $2}')
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
check() { awk -v v="$1" -v t="$2" -v dir="$3" 'BEGIN { ok = (dir == ">=") ? (v >= t) : (v <= t); print ok ? "met" : "**missed**" }'; }

mkdir -p "$(dirname "$RESULTS")"
[ -f "$RESULTS" ] || printf '# Benchmark results\n\nAppended by `make bench-redis` and `make bench-pg`; newest last.\n' > "$RESULTS"
{
    echo
    echo "## nscache, $(date -u +%Y-%m-%dT%H:%MZ) (commit $commit)"
    echo
    echo "Machine: $(nproc) cores ($cpu), $mem RAM, redis-server $redis_version, loopback."
    echo "Load: \`redis-benchmark -P 16 -c 50 -n $REQUESTS -r $KEYS\`, $KEYS preloaded keys, ${VALUE_BYTES}-byte values;"
    echo "$pinning. Plain Redis is a second redis-server without modules on the same core, holding"
    echo "as many keys (plain strings) as the nscache server."
    echo "Load average before the runs: $load_before."
    echo "Throughput: $ROUNDS interleaved rounds (even ones in reverse order), every run after an unmeasured"
    echo "warm-up of a tenth of its requests, each nscache run divided by the plain run of its own round;"
    echo "req/s columns are medians, ratios are the median of the per-round ratios. Every round's GET/FETCH/SET"
    echo "ratios: $all_rounds."
    echo
    echo "| measure | plain Redis | nscache | Lua alternative | nscache / plain | nscache / Lua | target (SPEC 6) |"
    echo "|---|---|---|---|---|---|---|"
    echo "| GET, req/s | $get_plain | $get_ns | $get_lua | $r_get | $r_lua | ≥ 0.90× plain: $(check "$r_get" 0.90 '>='); ≥ 3× Lua: $(check "$r_lua" 3 '>=') |"
    echo "| FETCH (hit), req/s, vs plain GET | $get_plain | $fetch_ns | | $r_fetch | | ≥ 0.90×: $(check "$r_fetch" 0.90 '>=') |"
    echo "| SET with ttl, req/s | $set_plain | $set_ns | | $r_set | | ≥ 0.90×: $(check "$r_set" 0.90 '>=') |"
    echo "| plain GET on the nscache server (what loading nscache costs other commands), req/s | $get_plain | $get_mod | | $r_get_mod | | |"
    echo "| plain SET EX on the nscache server, req/s | $set_plain | $set_mod | | $r_set_mod | | |"
    if [ ${#FLOOR[@]} -gt 0 ]; then
        echo "| yardstick: FLOOR.GET key (a module's bare read), req/s, vs plain GET | $get_plain | $floor_get | | $r_floor_get | | |"
        echo "| yardstick: FLOOR.NSGET ns key (bare read of \`ns:{key}\`), req/s, vs plain GET | $get_plain | $floor_nsget | | $r_floor_nsget | | |"
        echo "| yardstick: FLOOR.NSSET ns key ttl value (bare write with ttl, replicated with its absolute expiry), req/s, vs plain SET EX | $set_plain | $floor_nsset | | $r_floor_nsset | | |"
    fi
    echo "| invalidate $BIG entries, server time | SCAN+UNLINK: ${scan_usec} µs in server, ${scan_wall_ms} ms wall | INVALIDATE: ${inv_usec} µs | | | | < 1000 µs: $(check "$inv_usec" 1000 '<=') |"
    echo "| memory per entry (used_memory delta) | $plain_per B | $ns_per B | | +$(( ns_per - plain_per )) B | | ≤ +32 B: $(check $(( ns_per - plain_per )) 32 '<=') |"
    echo
    echo "The yardsticks (bench/floor/floor.c, loaded into the plain server) read and write plain strings"
    echo "through the module API with nothing else: no statistics, no ACL check, no type of their own. FLOOR.NSGET is the most any"
    echo "namespaced module read can reach, FLOOR.NSSET the most a namespaced module write with a"
    echo "relative ttl can (it must replicate the absolute expiry, as SET EX does); nscache pays"
    echo "them plus its own work."
    echo "The Lua alternative is \`EVALSHA\` of GET + HINCRBY of a stats hash + ZINCRBY of a hot-key"
    echo "sorted set, on the plain server, in every round (its ratio: the median of the rounds'). nscache ran with every statistic on (counters, top-K, both latency histograms)."
    echo "\`bytes\` reported by nscache for the $BIG-entry namespace: $ns_bytes_stat ($(( ns_bytes_stat / BIG )) B per entry, as MEMORY USAGE counts a key)."
    echo
    echo "Server-side stats after the throughput runs: \`$ns_stats\`"
} | tee -a "$RESULTS"

if [ "$LEASES" != 0 ]; then
    echo "==> leases: stampede and hot key (tests/src/bin/lease_bench.rs)"
    (cd "$ROOT" && cargo build --release -q -p cachetx-tests --bin lease_bench)
    lease_out=$(NSCACHE_MODULE=$MODULE "$ROOT/target/release/lease_bench")
    {
        echo
        echo "### Leases: stampede and hot key ($(date -u +%Y-%m-%dT%H:%MZ))"
        echo
        echo "$lease_out"
    } | tee -a "$RESULTS"
fi
