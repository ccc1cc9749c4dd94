#!/usr/bin/env bash
# Side-by-side benchmark: Switchboard and other WebSocket servers, same scenarios, same
# machine, one run.
#
#   bench/compare.sh                  full run (about 5 minutes): JSON in target/bench/, the
#                                     figures block of docs/benchmarks.md and docs/benchmarks.png
#   bench/compare.sh --quick          smoke run: short and small; target/bench/partial/ only
#   bench/compare.sh --only ws,echo   some servers and/or scenarios; target/bench/partial/ only
#
# Servers (NAME for --only): switchboard, ws (Node ws 8), socketio (Socket.IO 4.8),
# websockets (Python websockets), tungstenite (tokio-tungstenite). Each peer is a small
# server of ours in bench/peers/ on a registry package, installed into a temporary folder
# (npm ci from the committed lock file, a venv, cargo with its own CARGO_HOME and target
# directory) that is removed on exit: nothing is cached outside the clone but target/.
#
# Scenarios (NAME for --only): echo, fanout, connect; see docs/benchmarks.md.
#
# Every server gets a fresh process per scenario, pinned to CPU 0 (taskset -c 0); the
# generator (switchboard bench) runs on CPU 1 (--cpu-list 1). Loopback only. Every process
# started is stopped on exit, failure and Ctrl-C included. The whole run holds the lock
# /tmp/switchboard-bench.lock (flock) so that benchmarks on this machine never overlap.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench
SB=$ROOT/target/release/switchboard
DOC=$ROOT/docs/benchmarks.md
PNG=$ROOT/docs/benchmarks.png
LOCK=/tmp/switchboard-bench.lock
ALL_SERVERS=(switchboard ws socketio websockets tungstenite)
ALL_SCENARIOS=(echo fanout connect)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    echo
    cat <<'EOF'
Options:
  --quick        short durations and fewer connections (a smoke run)
  --only NAMES   servers and/or scenarios, comma-separated or repeated
                 (switchboard ws socketio websockets tungstenite echo fanout connect)
  -h, --help     this text
EOF
}

QUICK=0
ONLY=()
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --only)
        ONLY+=("${2:?--only needs NAMES}")
        shift
        ;;
    --only=*) ONLY+=("${1#*=}") ;;
    -h | --help) usage && exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2 && exit 2 ;;
    esac
    shift
done

SERVERS=()
SCENARIOS=()
IFS=$' \t\n,' read -r -a ONLY <<<"${ONLY[*]}"
for n in "${ONLY[@]}"; do
    if [[ " ${ALL_SERVERS[*]} " == *" $n "* ]]; then
        SERVERS+=("$n")
    elif [[ " ${ALL_SCENARIOS[*]} " == *" $n "* ]]; then
        SCENARIOS+=("$n")
    else
        echo "compare.sh: --only $n: not a server (${ALL_SERVERS[*]}) or a scenario (${ALL_SCENARIOS[*]})" >&2
        exit 2
    fi
done
((${#SERVERS[@]})) || SERVERS=("${ALL_SERVERS[@]}")
((${#SCENARIOS[@]})) || SCENARIOS=("${ALL_SCENARIOS[@]}")
want() { [[ " ${SERVERS[*]} ${SCENARIOS[*]} " == *" $1 "* ]]; }
# Only a full run rewrites the figures of docs/benchmarks.md and the chart, and the files in
# target/bench/; quick and partial runs write to target/bench/partial/.
WRITE_DOCS=$((QUICK == 0 && ${#ONLY[@]} == 0))
((WRITE_DOCS)) || OUT=$OUT/partial

if ((QUICK)); then
    DURATION=2 WARMUP=1 SUBSCRIBERS=200 CONNECTIONS=1000 SETTLE=1 HOLD=1
else
    DURATION=10 WARMUP=2 SUBSCRIBERS=1000 CONNECTIONS=19000 SETTLE=3 HOLD=5
fi

log() {
    if [[ -t 2 ]]; then
        printf '\033[1m== %s\033[0m\n' "$*" >&2
    else
        printf '== %s\n' "$*" >&2
    fi
}
die() {
    echo "compare.sh: $*" >&2
    exit 1
}

for tool in taskset python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
if want ws || want socketio; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        die "node and npm are needed (or --only without ws and socketio)"
    fi
fi
(($(nproc) >= 2)) || die "two CPUs are needed: the servers run on CPU 0, the generator on CPU 1"

# --- lock, temporary folder, cleanup -----------------------------------------------------

if command -v flock >/dev/null; then
    exec 9>>"$LOCK"
    if ! flock -n 9; then
        log "waiting for $LOCK (another benchmark is running)"
        flock 9
    fi
else
    log "flock not found: running without $LOCK"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-compare.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT" "$TMP/logs"
# What an earlier run of this script left (and only that: target/bench/ has other users).
rm -f "$OUT"/{echo,fanout,connect}-*.json "$OUT"/{report.json,report.md,figures.md,compare.png}
STARTED=$(date +%s)

# --- builds and installs -------------------------------------------------------------------

log "building switchboard (release)"
cargo build --release --quiet -p switchboard-cli
VERSIONS=("Switchboard $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes')")

if want ws || want socketio; then
    log "installing ws and socket.io (npm ci into $TMP/node)"
    mkdir -p "$TMP/node"
    cp bench/peers/package.json bench/peers/package-lock.json bench/peers/ws.js bench/peers/socketio.js "$TMP/node/"
    (
        cd "$TMP/node"
        npm_config_cache="$TMP/npm-cache" npm ci --no-audit --no-fund --loglevel=error 2>&1 |
            { grep -v 'Unknown user config' || true; }
    )
    [[ -d $TMP/node/node_modules/ws ]] || die "npm ci failed"
    npm_version() { node -p "require('$TMP/node/node_modules/$1/package.json').version"; }
    WS_NAME="ws $(npm_version ws)"
    SIO_NAME="socket.io $(npm_version socket.io)"
    VERSIONS+=("Node $(node --version)" "$WS_NAME" "$SIO_NAME")
fi
if want websockets; then
    log "installing websockets (venv in $TMP/venv)"
    python3 -m venv "$TMP/venv"
    "$TMP/venv/bin/pip" install --quiet --no-cache-dir -r bench/peers/requirements.txt
    PY_NAME="websockets $("$TMP/venv/bin/python" -c 'import websockets; print(websockets.__version__)')"
    VERSIONS+=("$("$TMP/venv/bin/python" --version)" "$PY_NAME")
fi
if want tungstenite; then
    log "building the tokio-tungstenite peer (CARGO_HOME and target directory in $TMP)"
    CARGO_HOME="$TMP/cargo-home" cargo build --release --locked --quiet \
        --manifest-path bench/peers/tungstenite/Cargo.toml --target-dir "$TMP/tungstenite-target"
    TUNG_NAME="tokio-tungstenite $(grep -A1 '^name = "tokio-tungstenite"' bench/peers/tungstenite/Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
    VERSIONS+=("$TUNG_NAME")
fi
VERSIONS+=("$(rustc --version | cut -d' ' -f1-2)")

# Switchboard: development mode (tokens from the secret file below), defaults otherwise;
# the namespace `bench` sends no join/leave pushes so that 10,000 members joining one room
# measure the connections, not N² pushes.
SECRET=$TMP/dev-secret
cat >"$TMP/switchboard.toml" <<'EOF'
dev = true

[namespaces.bench]
join_leave = false
EOF

# --- servers ---------------------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server SERVER LOGNAME: sets PORT and SERVER_PID once the port accepts connections.
start_server() {
    local server=$1 logfile=$TMP/logs/$2.server.log cmd
    PORT=$(free_port)
    case $server in
    switchboard)
        cmd=(env SWITCHBOARD_DEV_SECRET_FILE="$SECRET" "$SB" serve --config "$TMP/switchboard.toml"
            --listen "127.0.0.1:$PORT" --echo /echo --raw-fanout /fanout) ;;
    ws) cmd=(node "$TMP/node/ws.js" "$PORT") ;;
    socketio) cmd=(node "$TMP/node/socketio.js" "$PORT") ;;
    websockets) cmd=("$TMP/venv/bin/python" "$ROOT/bench/peers/websockets_server.py" "$PORT") ;;
    tungstenite) cmd=("$TMP/tungstenite-target/release/tungstenite-peer" "$PORT") ;;
    esac
    # exec: the server keeps the subshell's pid; 9>&-: it does not hold the lock.
    (cd "$TMP" && exec taskset -c 0 "${cmd[@]}") >"$logfile" 2>&1 9>&- &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -20 "$logfile" >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "$server did not listen on 127.0.0.1:$PORT within 30 s" >&2
    return 1
}

forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    forget "$SERVER_PID"
}

RESULTS=()
FAILED=()

# run SERVER SCENARIO NAME PATH BENCH-ARGS...: a fresh server, one `switchboard bench` run
# against ws://127.0.0.1:PORT/PATH, the server stopped.
run() {
    local server=$1 scenario=$2 name=$3 path=$4
    shift 4
    local slug
    slug=$scenario-$(sed -E 's/[^a-z0-9.]+/-/g; s/-$//' <<<"${name,,}")
    local json=$OUT/$slug.json out=$TMP/logs/$slug.out rc=0
    rm -f "$json"
    log "$scenario: $name"
    if ! start_server "$server" "$slug"; then
        FAILED+=("$scenario / $name: the server did not start")
        return 0
    fi
    "$SB" bench "$scenario" --url "ws://127.0.0.1:$PORT$path" --server-pid "$SERVER_PID" \
        --cpu-list 1 --name "$name" --json "$json" --quiet "$@" >"$out" 2>&1 9>&- &
    local bench_pid=$!
    PIDS+=("$bench_pid")
    wait "$bench_pid" || rc=$?
    forget "$bench_pid"
    cat "$out"
    stop_server
    if [[ -f $json ]]; then
        RESULTS+=("$json")
        ((rc == 0)) || FAILED+=("$scenario / $name: exit status $rc (see the warnings)")
    else
        FAILED+=("$scenario / $name: $(tail -1 "$out")")
    fi
}

SIO_PATH='/socket.io/?EIO=4&transport=websocket'
TIMES=(--duration "$DURATION" --warmup "$WARMUP")
# Peers in the order of the report, Switchboard first (the baseline).
peers() {
    want ws && echo "ws|$WS_NAME"
    want socketio && echo "socketio|$SIO_NAME"
    want websockets && echo "websockets|$PY_NAME"
    want tungstenite && echo "tungstenite|$TUNG_NAME"
    return 0
}

if want echo; then
    ECHO=(--connections 100 --in-flight 16 --size 64 "${TIMES[@]}")
    want switchboard && run switchboard echo switchboard /echo "${ECHO[@]}"
    while IFS='|' read -r server name; do
        if [[ $server == socketio ]]; then
            run "$server" echo "$name" "$SIO_PATH" --socketio "${ECHO[@]}"
        else
            run "$server" echo "$name" /echo "${ECHO[@]}"
        fi
    done < <(peers)
fi

if want fanout; then
    FANOUT=(--subscribers "$SUBSCRIBERS" --publishers 1 --window 16 --size 64 "${TIMES[@]}")
    if want switchboard; then
        run switchboard fanout switchboard /fanout --mode raw "${FANOUT[@]}"
        run switchboard fanout "switchboard (protocol room)" /ws --mode protocol \
            --room bench:fanout --secret-file "$SECRET" "${FANOUT[@]}"
    fi
    while IFS='|' read -r server name; do
        if [[ $server == socketio ]]; then
            run "$server" fanout "$name (room emit)" "$SIO_PATH" --mode raw --socketio "${FANOUT[@]}"
        else
            run "$server" fanout "$name" /fanout --mode raw "${FANOUT[@]}"
        fi
    done < <(peers)
fi

if want connect; then
    CONNECT=(--connections "$CONNECTIONS" --concurrency 100 --warmup "$SETTLE" --duration "$HOLD")
    if want switchboard; then
        run switchboard connect switchboard /echo "${CONNECT[@]}"
        run switchboard connect "switchboard (auth + room)" /ws --subscribe bench:fanout \
            --secret-file "$SECRET" "${CONNECT[@]}"
        run switchboard connect "switchboard (deflate)" /echo --deflate "${CONNECT[@]}"
        run switchboard connect "switchboard (auth + room, deflate)" /ws --subscribe bench:fanout \
            --deflate --secret-file "$SECRET" "${CONNECT[@]}"
    fi
    while IFS='|' read -r server name; do
        if [[ $server == socketio ]]; then
            run "$server" connect "$name" "$SIO_PATH" --socketio "${CONNECT[@]}"
        else
            run "$server" connect "$name" /echo "${CONNECT[@]}"
        fi
    done < <(peers)
fi

# --- report ------------------------------------------------------------------------------

((${#RESULTS[@]})) || die "no results"
ELAPSED=$(($(date +%s) - STARTED))
BASELINE=()
want switchboard && BASELINE=(--baseline switchboard)
REPORT_PNG=$OUT/compare.png
((WRITE_DOCS)) && REPORT_PNG=$PNG
"$SB" bench report "${RESULTS[@]}" "${BASELINE[@]}" --markdown --json "$OUT/report.json" \
    --png "$REPORT_PNG" >"$OUT/report.md"
log "report (${OUT#"$ROOT/"}/report.md, report.json; chart ${REPORT_PNG#"$ROOT/"})"
cat "$OUT/report.md"

# The generated block: what ran where, the table, the warnings, the chart.
{
    echo "<!-- figures:begin -->"
    echo "<!-- Generated by bench/compare.sh; edit the script, not this block. -->"
    echo
    echo "Measured $(date -u +%Y-%m-%d) by \`bench/compare.sh\` (run it to repeat; it took"
    echo "$((ELAPSED / 60)) min $((ELAPSED % 60)) s) on $(nproc) × $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1),"
    echo "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)."
    echo "Each server ran alone on CPU 0 (\`taskset -c 0\`), the generator on CPU 1"
    echo "(\`--cpu-list 1\`), over loopback; a fresh server process per scenario."
    echo "Versions: $(printf '%s, ' "${VERSIONS[@]}" | sed 's/, $//')."
    echo
    echo "- **echo**: 100 connections × 16 messages in flight × 64 B, ${WARMUP} s warm-up, ${DURATION} s measured."
    echo "- **fanout**: ${SUBSCRIBERS} subscribers and 1 publisher keeping 16 publications of 64 B in flight"
    echo "  (raw broadcast routes; Socket.IO: room emit; Switchboard also through a protocol room)."
    echo "- **connect**: ${CONNECTIONS} idle connections (plain; Switchboard also authenticated and"
    echo "  subscribed to one room, and both again with permessage-deflate negotiated): handshake rate"
    echo "  and latency, and the server's resident memory per connection after ${SETTLE} s + ${HOLD} s"
    echo "  (KiB/conn)."
    echo
    cat "$OUT/report.md"
    echo
    python3 - "${RESULTS[@]}" <<'EOF'
import json, sys
notes = []
for path in sys.argv[1:]:
    r = json.load(open(path))
    for w in r.get("warnings", []):
        notes.append(f"- {r['scenario']} / {r['name']}: {w}")
if notes:
    print("Warnings of the runs (the JSON files in `target/bench/` have every number):\n")
    print("\n".join(notes))
    print()
EOF
    if ((${#FAILED[@]})); then
        printf -- '- did not complete cleanly: %s\n' "${FAILED[@]}"
        echo
    fi
    echo "![throughput and latency of every run](benchmarks.png)"
    echo "<!-- figures:end -->"
} >"$OUT/figures.md"

if ((WRITE_DOCS)); then
    python3 - "$DOC" "$OUT/figures.md" <<'EOF'
import sys
doc_path, block_path = sys.argv[1], sys.argv[2]
doc = open(doc_path, encoding="utf-8").read()
block = open(block_path, encoding="utf-8").read().rstrip("\n")
begin, end = "<!-- figures:begin -->", "<!-- figures:end -->"
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc = head + block + tail
else:
    doc = doc.rstrip("\n") + "\n\n## Side by side\n\n" + block + "\n"
open(doc_path, "w", encoding="utf-8").write(doc)
EOF
    log "wrote the figures of docs/benchmarks.md and docs/benchmarks.png"
else
    log "partial or quick run: docs/benchmarks.md left alone (block in ${OUT#"$ROOT/"}/figures.md)"
fi
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
((${#FAILED[@]} == 0)) || {
    printf 'compare.sh: %s\n' "${FAILED[@]}" >&2
    exit 1
}
