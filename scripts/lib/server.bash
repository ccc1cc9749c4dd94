# shellcheck shell=bash
# Starting and stopping a `switchboard serve --echo` for the test stages (sourced by
# scripts/test and scripts/autobahn; not a command of its own).
#
#   start_echo_server BIN LOG [SWITCHBOARD_KEY=VALUE...]
#                                 start BIN on a free loopback port with the echo route at /echo
#                                 and a 16 MiB message limit, in LOG's folder, logging to LOG,
#                                 with the given settings (and no other SWITCHBOARD_* variable);
#                                 sets SERVER_PID, SERVER_PORT and SERVER_URL
#                                 (http://127.0.0.1:PORT) once GET /healthz answers 200
#   check_echo_server             fails (with the log's tail) if the server has exited
#   stop_echo_server              stops it and waits for it; fails if its log shows a panic
#   mint_dev_token USER           prints a token for USER that the running server accepts: it
#                                 runs `BIN token` in the server's folder, where development
#                                 mode keeps its secret
#   check_context_takeover WS_URL fails unless a permessage-deflate offer to WS_URL is answered
#                                 with both context takeovers on (see CONTEXT_TAKEOVER)
#
# Callers install `trap stop_echo_server EXIT` themselves.

SERVER_PID=""
SERVER_PORT=""
SERVER_URL=""
SERVER_LOG=""
SERVER_BIN=""
# The settings of the server of the extra runs with both permessage-deflate context takeovers
# on (Autobahn 12.* and 13.*, the interop suites); by default the server keeps no zlib context.
# shellcheck disable=SC2034 # used by the scripts that source this file
CONTEXT_TAKEOVER=(
  SWITCHBOARD_WEBSOCKET__COMPRESSION__SERVER_CONTEXT_TAKEOVER=true
  SWITCHBOARD_WEBSOCKET__COMPRESSION__CLIENT_CONTEXT_TAKEOVER=true
)
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
  local settings=("${@:3}")
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
  SERVER_BIN="$bin"
  (
    cd "$(dirname "$SERVER_LOG")" || exit
    exec env "${unset_switchboard[@]}" "${settings[@]}" "$bin" serve --listen "127.0.0.1:$SERVER_PORT" \
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
  echo "server: $bin serve on $SERVER_URL (pid $SERVER_PID, log $SERVER_LOG)${settings[*]:+ with ${settings[*]}}"
}

mint_dev_token() {
  local unset_switchboard=() name
  while IFS= read -r name; do
    unset_switchboard+=(-u "$name")
  done < <(compgen -e | grep '^SWITCHBOARD_' || true)
  (cd "$(dirname "$SERVER_LOG")" && env "${unset_switchboard[@]}" "$SERVER_BIN" token --user "$1")
}

check_context_takeover() {
  python3 - "$1" <<'PY'
import base64, os, socket, sys, urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
offer = "permessage-deflate; client_max_window_bits"
key = base64.b64encode(os.urandom(16)).decode()
with socket.create_connection((url.hostname, url.port), timeout=10) as s:
    s.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n")
              .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
lines = head.decode("latin-1").split("\r\n")
answer = [l.split(":", 1)[1].strip() for l in lines
          if l.lower().startswith("sec-websocket-extensions:")]
if not lines[0].startswith("HTTP/1.1 101") or not answer or "permessage-deflate" not in answer[0]:
    sys.exit(f"error: {offer!r} to {sys.argv[1]} was answered {lines[0]!r} with extensions {answer}")
if "no_context_takeover" in answer[0]:
    sys.exit(f"error: the server should keep both compression contexts, but answered "
             f"Sec-WebSocket-Extensions: {answer[0]}")
print(f"server: context takeover on both sides (Sec-WebSocket-Extensions: {answer[0]})")
PY
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
