#!/usr/bin/env bash
# Old and new Switchboard side by side: the same scenarios against a release build of REV and
# of the working tree, alternating (old, new, old, new, ...) so that a noisy machine moves both
# alike, then one report with old as the baseline. For "no figure more than 5 % worse" checks
# of a change to the hot paths.
#
#   bench/old-vs-new.sh REV [ROUNDS]     e.g. bench/old-vs-new.sh main~3 3
#
# REV is built in a git worktree under target/old-vs-new/ with a target directory of its own
# (a first release build takes several minutes on 2 cores; later ones are incremental).
# Servers run pinned to CPU 0, the generator to CPU 1, over loopback; every scenario gets a
# fresh server. Results: target/old-vs-new/results/ (JSON per run) and report.md.
set -euo pipefail
REV=${1:?usage: bench/old-vs-new.sh REV [ROUNDS]}
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$ROOT/target/old-vs-new
OLD_TREE=$WORK/tree
OUT=$WORK/results
mkdir -p "$WORK"
(($(nproc) >= 2)) || { echo "two CPUs are needed: server on CPU 0, generator on CPU 1" >&2; exit 1; }

echo "building the working tree (release)"
(cd "$ROOT" && cargo build --release --quiet -p switchboard-cli)
NEW=$ROOT/target/release/switchboard
echo "building $REV (release, in $OLD_TREE)"
if [ -d "$OLD_TREE" ]; then git -C "$OLD_TREE" checkout --quiet --detach "$REV"; else git -C "$ROOT" worktree add --quiet --detach "$OLD_TREE" "$REV"; fi
(cd "$OLD_TREE" && cargo build --release --quiet -p switchboard-cli --target-dir "$WORK/target")
OLD=$WORK/target/release/switchboard

rm -rf "$OUT"; mkdir -p "$OUT"
SECRET=$WORK/dev-secret
cat >"$WORK/switchboard.toml" <<'T'
dev = true

[namespaces.bench]
join_leave = false
T
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# run BIN NAME SCENARIO PATH ARGS...: a fresh server on CPU 0, one `switchboard bench` run on CPU 1.
run() {
    local bin=$1 name=$2 scenario=$3 path=$4 port pid
    shift 4
    port=$(free_port)
    SWITCHBOARD_DEV_SECRET_FILE=$SECRET taskset -c 0 "$bin" serve --config "$WORK/switchboard.toml" \
        --listen "127.0.0.1:$port" --echo /echo --raw-fanout /fanout >"$OUT/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    "$NEW" bench "$scenario" --url "ws://127.0.0.1:$port$path" --server-pid "$pid" --cpu-list 1 \
        --name "$name" --json "$OUT/$name.$ROUND.json" "$@" >"$OUT/$name.$ROUND.txt" 2>&1 || true
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
T=(--warmup 2s --duration 6s)
CONNECT=(--connections 10000 --concurrency 100 --warmup 3s --duration 5s)
for ROUND in $(seq "$ROUNDS"); do
    for side in old new; do
        bin=$OLD; [ $side = new ] && bin=$NEW
        echo "round $ROUND: $side"
        run "$bin" "$side echo" echo /echo --connections 100 --in-flight 16 --size 64 "${T[@]}"
        run "$bin" "$side fanout raw" fanout /fanout --mode raw --subscribers 1000 --publishers 1 --window 16 --size 64 "${T[@]}"
        run "$bin" "$side fanout protocol" fanout /ws --mode protocol --room bench:fanout --secret-file "$SECRET" --subscribers 1000 --publishers 1 --window 16 --size 64 "${T[@]}"
        run "$bin" "$side connect plain" connect /echo "${CONNECT[@]}"
        run "$bin" "$side connect auth+room" connect /ws --subscribe bench:fanout --secret-file "$SECRET" "${CONNECT[@]}"
    done
done
"$NEW" bench report "$OUT"/*.json --markdown >"$WORK/report.md"
cat "$WORK/report.md"
echo "per-run JSON and logs: $OUT; report: $WORK/report.md"
