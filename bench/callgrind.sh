#!/usr/bin/env bash
# Instructions the server executes per message, for binaries side by side: each BIN serves
# under valgrind's callgrind (instrumentation switched on just before the load starts) while
# `switchboard bench` drives echo and protocol fan-out against it; the server's instruction
# count divided by the messages echoed (or deliveries made). Instruction counts repeat within
# a fraction of a percent on a noisy machine, where wall-clock rates do not.
#
#   bench/callgrind.sh BIN...        e.g. bench/callgrind.sh /tmp/old/switchboard target/release/switchboard
#
# The generator is the working tree's `target/debug/switchboard` (build it first), on CPU 1;
# the servers on CPU 0. Output: one line per binary and scenario.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GEN=${GEN:-$ROOT/target/debug/switchboard}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/sb.toml" <<'T'
dev = true
[namespaces.bench]
join_leave = false
T
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure BIN SCENARIO PATH UNIT ARGS...
measure() {
  local bin=$1 scenario=$2 path=$3 unit=$4 port pid out ir count
  shift 4
  port=$(free_port)
  out="$WORK/callgrind.out"
  rm -f "$out"*
  (cd "$WORK" && exec taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" serve --config sb.toml --listen "127.0.0.1:$port" --echo /echo) >"$WORK/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  callgrind_control --instr=on "$pid" >/dev/null
  (cd "$WORK" && "$GEN" bench "$scenario" --url "ws://127.0.0.1:$port$path" --cpu-list 1 --warmup 0 -q \
    --json "$WORK/result.json" "$@" >"$WORK/bench.txt" 2>&1) || { cat "$WORK/bench.txt" >&2; }
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  ir=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}')
  count=$(python3 -c "import json; print(json.load(open('$WORK/result.json'))['results']['received'])" 2>/dev/null || echo 0)
  printf '%-40s %-10s %14s Ir %10s %s  %8.0f Ir per %s\n' "$bin" "$scenario" "$ir" "$count" "$unit" \
    "$(python3 -c "print($ir/$count if $count else 0)")" "$unit"
}

for bin in "$@"; do
  measure "$bin" echo /echo messages -c 10 -k 16 --duration 5s
  measure "$bin" fanout /ws deliveries -n 100 -p 1 --window 16 --duration 5s
done
