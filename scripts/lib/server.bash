# shellcheck shell=bash
# Starting and stopping a `switchboard serve --echo` for the test stages (sourced by
# scripts/test and scripts/autobahn; not a command of its own).
#
#   start_echo_server BIN LOG     start BIN on a free loopback port with the echo route at /echo
#                                 and a 16 MiB message limit, in LOG's folder, logging to LOG;
#                                 sets SERVER_PID, SERVER_PORT and SERVER_URL
#                                 (http://127.0.0.1:PORT) once GET /healthz answers 200
#   check_echo_server             fails (with the log's tail) if the server has exited
#   stop_echo_server              stops it and waits for it; fails if its log shows a panic
#
# Callers install `trap stop_echo_server EXIT` themselves.

SERVER_PID=""
SERVER_PORT=""
SERVER_URL=""
SERVER_LOG=""
# Bounded wait for the first 200 from /healthz.
SERVER_START_TIMEOUT="${SERVER_START_TIMEOUT:-30}"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

server_log_tail() {
  echo "--- last lines of $SERVER_LOG ---" >&2
  tail -n 30 "$SERVER_LOG" >&2 || true
  echo "---" >&2
}

start_echo_server() {
  local bin="$1"
  mkdir -p "$(dirname "$2")"
  SERVER_LOG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
  SERVER_PORT="$(free_port)"
  SERVER_URL="http://127.0.0.1:$SERVER_PORT"
  # The server reads SWITCHBOARD_* variables as configuration and rejects unknown ones, so it
  # gets none of them (SWITCHBOARD_URL is for the tests): every run starts it the same way.
  local unset_switchboard=() name
  while IFS= read -r name; do
    unset_switchboard+=(-u "$name")
  done < <(compgen -e | grep '^SWITCHBOARD_' || true)
  # It runs in its log's folder: development mode keeps its secret in ./.switchboard/.
  bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  (
    cd "$(dirname "$SERVER_LOG")" || exit
    exec env "${unset_switchboard[@]}" "$bin" serve --listen "127.0.0.1:$SERVER_PORT" \
      --echo /echo --max-message-size 16777216 >"$SERVER_LOG" 2>&1 </dev/null
  ) &
  SERVER_PID=$!

  local deadline=$((SECONDS + SERVER_START_TIMEOUT))
  until python3 - "$SERVER_URL/healthz" 2>/dev/null <<'PY'; do
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      local status=0
      wait "$SERVER_PID" 2>/dev/null || status=$?
      echo "error: the server exited (status $status) before GET /healthz answered 200" >&2
      server_log_tail
      SERVER_PID=""
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: GET $SERVER_URL/healthz did not answer 200 within ${SERVER_START_TIMEOUT} s" >&2
      server_log_tail
      return 1
    fi
    sleep 0.1
  done
  echo "server: $bin serve on $SERVER_URL (pid $SERVER_PID, log $SERVER_LOG)"
}

check_echo_server() {
  if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: the server (pid $SERVER_PID) exited during the tests" >&2
    server_log_tail
    SERVER_PID=""
    return 1
  fi
}

stop_echo_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    # Give it 10 s for a graceful shutdown, then stop it for good.
    local deadline=$((SECONDS + 10))
    while kill -0 "$SERVER_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  # A panic in a connection task does not stop the server, but it is a bug all the same.
  if [ -n "$SERVER_LOG" ] && grep -q 'panicked at' "$SERVER_LOG" 2>/dev/null; then
    echo "error: the server panicked; see $SERVER_LOG:" >&2
    grep -m 5 -A 3 'panicked at' "$SERVER_LOG" >&2
    SERVER_LOG=""
    return 1
  fi
  SERVER_LOG=""
}
