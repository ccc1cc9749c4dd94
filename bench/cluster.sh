#!/usr/bin/env bash
# The cluster benchmark: several `switchboard serve` nodes on one Redis on this machine, the
# connections of `switchboard bench` spread over them (`--url` repeated, round-robin), Redis
# read with `--redis`.
#
#   bench/cluster.sh                 full run: 100,000 idle connections over 6 nodes, then
#                                    fan-out to 1,000 subscribers, one node against 3 nodes
#   bench/cluster.sh --quick         smoke run: small and short
#   bench/cluster.sh --idle 50000    fewer idle connections
#   bench/cluster.sh --only fanout   one scenario (idle or fanout)
#
# Scenarios (docs/benchmarks.md, "Cluster"):
# - idle: N connections (authenticated, each in the room `bench:idle`) over 6 nodes: each
#   node's memory per connection, Redis memory per connection.
# - fanout: one room, 1,000 subscribers, one publisher (window 64, 64 B). Three set-ups in
#   turn, twice (--rounds): `single` (one node, in-memory broker), `single-redis` (one node on
#   Redis) and `cluster` (3 nodes on Redis; subscriber i on node i mod 3, the publisher is
#   connection 1,000 and so on node 1,000 mod 3 = the second node). Every publication is then
#   delivered by all three nodes: one from its own hub, two from Redis pub/sub. Deliveries/s,
#   delivery ratio, publish-to-deliver latency, Redis commands per publication. The window is
#   64, not the 16 of the single-node figures: a publication through Redis takes a round trip
#   more, and with 16 in flight the cluster waits on latency instead of using its core. Redis
#   is one of the --server-pid of its set-ups, so server CPU counts it too.
#
# Every node and Redis run on CPU 0 (taskset -c 0), the generator on CPU 1 (--cpu-list 1), so
# the single node and the cluster get the same core. Each set-up gets a fresh redis-server on
# a free port (no persistence) and fresh nodes. Loopback only; every process started is
# stopped on exit, failure and Ctrl-C included; the run holds /tmp/switchboard-bench.lock
# (flock) like bench/compare.sh. Results: JSON in target/bench/cluster/ and a summary on
# stdout. SWITCHBOARD=PATH uses that binary instead of building a release one.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench/cluster
LOCK=/tmp/switchboard-bench.lock

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    echo
    cat <<'EOF'
Options:
  --quick          small and short (a smoke run)
  --idle N         idle connections (default 100000)
  --idle-nodes N   nodes of the idle scenario (default 6)
  --fanout-nodes N nodes of the fan-out cluster (default 3)
  --subscribers N  fan-out subscribers (default 1000)
  --rounds N       rounds of the three fan-out set-ups (default 2)
  --publishers P   fan-out publishers (default 1), continuing the round-robin over the nodes
  --window W       publications in flight per publisher (default 64)
  --rate R         publications per second instead of a window (the same load for every
                   set-up: compare their server CPU)
  --only NAME      idle or fanout
  -h, --help       this text
EOF
}

QUICK=0
IDLE=100000
IDLE_NODES=6
FANOUT_NODES=3
SUBSCRIBERS=1000
ROUNDS=2
WINDOW=64
PUBLISHERS=1
RATE=
ONLY=
DURATION=10
WARMUP=2
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --idle) IDLE=${2:?--idle needs N} && shift ;;
    --idle-nodes) IDLE_NODES=${2:?--idle-nodes needs N} && shift ;;
    --fanout-nodes) FANOUT_NODES=${2:?--fanout-nodes needs N} && shift ;;
    --subscribers) SUBSCRIBERS=${2:?--subscribers needs N} && shift ;;
    --rounds) ROUNDS=${2:?--rounds needs N} && shift ;;
    --window) WINDOW=${2:?--window needs W} && shift ;;
    --publishers) PUBLISHERS=${2:?--publishers needs P} && shift ;;
    --rate) RATE=${2:?--rate needs R} && shift ;;
    --only) ONLY=${2:?--only needs idle or fanout} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) echo "cluster.sh: unknown option $1 (see --help)" >&2 && exit 2 ;;
    esac
    shift
done
case $ONLY in '' | idle | fanout) ;; *) echo "cluster.sh: --only $ONLY: idle or fanout" >&2 && exit 2 ;; esac
for n in "$IDLE" "$IDLE_NODES" "$FANOUT_NODES" "$SUBSCRIBERS" "$ROUNDS" "$WINDOW" "$PUBLISHERS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: $n: a positive number is needed" >&2 && exit 2; }
done
if ((QUICK)); then
    IDLE=$((IDLE < 2000 ? IDLE : 2000))
    SUBSCRIBERS=$((SUBSCRIBERS < 100 ? SUBSCRIBERS : 100))
    ROUNDS=1 DURATION=2 WARMUP=1
fi
want() { [[ -z $ONLY || $ONLY == "$1" ]]; }

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*" && exit 1; }
for tool in taskset python3 redis-server; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
(($(nproc) >= 2)) || die "two CPUs are needed: the servers run on CPU 0, the generator on CPU 1"

if command -v flock >/dev/null; then
    exec 9>>"$LOCK"
    if ! flock -n 9; then
        log "waiting for $LOCK (another benchmark is running)"
        flock 9
    fi
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX")
PIDS=()
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The generator holds every connection, each node its share: room for them all (root may
# raise the hard limit; anyone else gets the hard limit, and the bench says when it is short).
NOFILE=$((IDLE + 10000))
ulimit -Hn "$NOFILE" 2>/dev/null || true
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SB=${SWITCHBOARD:-}
if [[ -z $SB ]]; then
    log "building switchboard (release)"
    cargo build --release --quiet -p switchboard-cli
    SB=$ROOT/target/release/switchboard
fi
[[ -x $SB ]] || die "$SB: not an executable"
mkdir -p "$OUT" "$TMP/logs"
rm -f "$OUT"/*.json
SECRET=$TMP/dev-secret

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PID PORT LOG: until the port accepts connections (or the process is gone).
wait_port() {
    for _ in $(seq 300); do
        if ! kill -0 "$1" 2>/dev/null; then
            tail -20 "$3" >&2
            return 1
        fi
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$2 within 30 s ($3)"
    return 1
}

# start_redis NAME: a fresh redis-server on CPU 0; sets REDIS_URL and REDIS_PID.
start_redis() {
    local port log=$TMP/logs/$1.redis.log
    port=$(free_port)
    (exec taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$TMP") >"$log" 2>&1 9>&- &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PID" "$port" "$log"
    REDIS_URL=redis://127.0.0.1:$port
}

# start_nodes NAME N [BROKER-URL]: N nodes on CPU 0 (in-memory broker without a URL); sets
# NODE_URLS and NODE_PIDS. Development mode with one shared secret; the namespace `bench`
# sends no join/leave pushes (members joining one room measure the connections, not N²
# pushes); nothing in the `[limits]` applies in development mode.
start_nodes() {
    local name=$1 n=$2 broker=${3:-} i port log conf=$TMP/$1.toml
    {
        echo 'dev = true'
        if [[ -n $broker ]]; then printf '[broker]\nkind = "redis"\nurl = "%s"\n' "$broker"; fi
        printf '[namespaces.bench]\njoin_leave = false\n'
    } >"$conf"
    NODE_URLS=() NODE_PIDS=()
    for i in $(seq "$n"); do
        port=$(free_port)
        log=$TMP/logs/$name.node$i.log
        (cd "$TMP" && SWITCHBOARD_DEV_SECRET_FILE=$SECRET exec taskset -c 0 "$SB" serve \
            --config "$conf" --listen "127.0.0.1:$port") >"$log" 2>&1 9>&- &
        PIDS+=("$!")
        NODE_PIDS+=("$!")
        wait_port "$!" "$port" "$log"
        NODE_URLS+=("ws://127.0.0.1:$port/ws")
    done
}

# stop_all: every node and Redis of the set-up that just ran.
stop_all() {
    stop_pids "${PIDS[@]}"
    PIDS=()
}

# cluster_args [REDIS-URL]: ARGS = --url and --server-pid of every node (and --redis when given).
cluster_args() {
    local i
    ARGS=()
    for i in "${!NODE_URLS[@]}"; do
        ARGS+=(--url "${NODE_URLS[$i]}" --server-pid "${NODE_PIDS[$i]}")
    done
    if [[ -n ${1:-} ]]; then ARGS+=(--redis "$1"); fi
}

# bench ARGS...: one run; a run that was not clean (exit 1: its report says why) does not
# stop the others, one that could not start (exit 2) does.
bench() {
    local rc=0
    SWITCHBOARD_DEV_SECRET_FILE=$SECRET "$SB" bench "$@" --cpu-list 1 9>&- || rc=$?
    if ((rc == 1)); then log "switchboard bench $1: not a clean run (see its warnings)"; fi
    return $((rc == 1 ? 0 : rc))
}

# redis_used_memory URL: `used_memory` of `INFO memory` (no redis-cli needed).
redis_used_memory() {
    python3 - "${1##*:}" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"INFO memory\r\n")
data = b""
while b"\r\n" not in data or len(data) < data.index(b"\r\n") + 2 + int(data[1:data.index(b"\r\n")]):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("redis closed the connection")
    data += chunk
for line in data.decode().splitlines():
    if line.startswith("used_memory:"):
        print(line.split(":")[1])
PY
}

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }

# established N PORTS...: waits until N connections to these ports are established.
established() {
    local n=$1 filter got
    shift
    filter=$(printf 'sport = :%s or ' "$@")
    for _ in $(seq 1200); do
        got=$(ss -Htn state established "( ${filter% or } )" | wc -l)
        ((got >= n)) && return 0
        sleep 0.5
    done
    log "only $got of $n connections were established within 10 minutes"
    return 1
}

if want idle; then
    # One bench process holds at most `ulimit -n` connections (this machine: 20,000, and the
    # hard limit cannot be raised without CAP_SYS_RESOURCE), so N connections take
    # ceil(N / 19,000) processes side by side. Their hold (--warmup: 3 minutes, 30 s for one
    # process) outlasts everyone's set-up and the 5 s of settling:
    # the script reads each node's VmRSS and Redis's used_memory itself once all N are
    # established, against the figures read before the first connection.
    PER=$((19000 < $(ulimit -n) - 100 ? 19000 : $(ulimit -n) - 100))
    K=$(((IDLE + PER - 1) / PER))
    log "idle: $IDLE connections over $IDLE_NODES nodes on one Redis ($K bench process(es))"
    start_redis idle
    start_nodes idle "$IDLE_NODES" "$REDIS_URL"
    cluster_args "$REDIS_URL"
    PORTS=()
    for u in "${NODE_URLS[@]}"; do p=${u##*:} && PORTS+=("${p%%/*}"); done
    BEFORE=()
    for pid in "${NODE_PIDS[@]}"; do BEFORE+=("$(rss "$pid")"); done
    REDIS_BEFORE=$(redis_used_memory "$REDIS_URL")
    BENCHES=()
    for k in $(seq "$K"); do
        n=$((IDLE / K + (k <= IDLE % K ? 1 : 0)))
        (SWITCHBOARD_DEV_SECRET_FILE=$SECRET exec "$SB" bench connect "${ARGS[@]}" --cpu-list 1 \
            --connections "$n" --subscribe bench:idle --concurrency $((100 / K + 1)) \
            --warmup $((K > 1 ? 180 : 30)) --duration "$DURATION" --setup-timeout 10m --quiet \
            --name "idle-$IDLE_NODES-nodes-$k" --json "$OUT/idle-$k.json") >"$TMP/logs/idle-bench-$k.log" 2>&1 9>&- &
        BENCHES+=("$!")
        PIDS+=("$!")
    done
    established "$IDLE" "${PORTS[@]}"
    # Settled: the last handshakes' buffers returned, presence written to Redis.
    sleep 5
    {
        echo "idle: $IDLE connections (authenticated, each in bench:idle) over $IDLE_NODES nodes"
        total=0
        for i in "${!NODE_PIDS[@]}"; do
            after=$(rss "${NODE_PIDS[$i]}")
            conns=$(ss -Htn state established "( sport = :${PORTS[$i]} )" | wc -l)
            ((conns > 0)) || die "node $((i + 1)) has no connection left: the bench processes ended early"
            total=$((total + after - BEFORE[i]))
            echo "node $((i + 1)) (${NODE_URLS[$i]}): $conns connections, RSS ${BEFORE[$i]} -> $after B, $(((after - BEFORE[i]) / conns)) B per connection"
        done
        echo "all nodes: $((total / IDLE)) B per connection"
        r=$(redis_used_memory "$REDIS_URL")
        echo "redis: used_memory $REDIS_BEFORE -> $r B, $(((r - REDIS_BEFORE) / IDLE)) B per connection"
    } | tee "$OUT/idle-summary.txt"
    for k in "${!BENCHES[@]}"; do
        wait "${BENCHES[$k]}" || log "bench process $((k + 1)): exit $? (see $OUT/idle-$((k + 1)).json)"
    done
    stop_all
fi

if want fanout; then
    for round in $(seq "$ROUNDS"); do
        for setup in single single-redis cluster; do
            log "fanout round $round: $setup"
            case $setup in
            single) start_nodes "$setup" 1 && cluster_args ;;
            single-redis) start_redis "$setup" && start_nodes "$setup" 1 "$REDIS_URL" && cluster_args "$REDIS_URL" ;;
            cluster) start_redis "$setup" && start_nodes "$setup" "$FANOUT_NODES" "$REDIS_URL" && cluster_args "$REDIS_URL" ;;
            esac
            if [[ $setup != single ]]; then ARGS+=(--server-pid "$REDIS_PID"); fi
            if [[ -n $RATE ]]; then ARGS+=(--rate "$RATE"); else ARGS+=(--window "$WINDOW"); fi
            bench fanout "${ARGS[@]}" --subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" \
                --size 64 --room bench:fanout --warmup "$WARMUP" --duration "$DURATION" \
                --name "$setup" --json "$OUT/fanout-$setup-$round.json"
            stop_all
        done
    done
    "$SB" bench report "$OUT"/fanout-*.json --baseline single --markdown
fi
log "results in $OUT"
