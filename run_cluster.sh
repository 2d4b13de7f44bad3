#!/usr/bin/env bash
# Start, stop or inspect a local PickleDB Cluster.
#   ./run_cluster.sh [start] [--nodes N] [--base-port P] [--heartbeat-interval S] [--election-timeout S]
#   ./run_cluster.sh stop
#   ./run_cluster.sh status
#   ./run_cluster.sh setup      (only create/update the virtual environment)
set -euo pipefail
cd "$(dirname "$0")"

STATE_DIR=.cluster
VENV=.venv
PY="$VENV/bin/python"

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

ensure_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [[ ! -x "$PY" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "Setting up $VENV from requirements.txt (first run only)..."
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
  fi
}

running_pids() {
  local f pid
  for f in "$STATE_DIR"/node_*.pid; do
    [[ -e "$f" ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
  done
}

http_get() {  # http_get URL -> prints body, fails when unreachable
  "$PY" - "$1" <<'EOF'
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=1).read().decode())
except Exception:
    sys.exit(1)
EOF
}

port_free() {
  "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from a previous run is fine
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

cmd_status() {
  if [[ ! -f "$STATE_DIR/ports" ]]; then echo "No cluster started by this script."; return 1; fi
  local port body
  for port in $(cat "$STATE_DIR/ports"); do
    if body=$(http_get "http://127.0.0.1:$port/status"); then
      echo "$body" | "$PY" -c '
import json, sys
v = json.load(sys.stdin)
print("{node_id}  {role:<9} term={term} commit={commit_index} applied={applied_index} leader={leader}".format(**v))'
    else
      echo "http://127.0.0.1:$port  down"
    fi
  done
}

cmd_stop() {
  local pids pid waited=0
  pids=$(running_pids)
  if [[ -z "$pids" ]]; then echo "No running nodes."; rm -f "$STATE_DIR"/node_*.pid; return 0; fi
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  while [[ -n "$(running_pids)" && $waited -lt 100 ]]; do sleep 0.1; waited=$((waited + 1)); done
  for pid in $(running_pids); do echo "Node $pid did not stop in 10 s; killing it."; kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$STATE_DIR"/node_*.pid
  echo "Cluster stopped."
}

cmd_start() {
  local nodes=3 base=4000 hb=2 et=5
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --nodes) nodes="$2"; shift 2 ;;
      --base-port) base="$2"; shift 2 ;;
      --heartbeat-interval) hb="$2"; shift 2 ;;
      --election-timeout) et="$2"; shift 2 ;;
      -h|--help) usage 0 ;;
      *) echo "Unknown option: $1" >&2; usage 2 ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "--nodes must be a positive integer" >&2; exit 2; }
  [[ "$base" =~ ^[0-9]+$ ]] || { echo "--base-port must be a number" >&2; exit 2; }
  if [[ -n "$(running_pids)" ]]; then
    echo "A cluster is already running (ports: $(cat "$STATE_DIR/ports")). Use './run_cluster.sh stop' first." >&2
    exit 1
  fi
  ensure_venv
  local ports=() i port
  for ((i = 0; i < nodes; i++)); do ports+=($((base + i))); done
  for port in "${ports[@]}"; do
    port_free "$port" || { echo "Port $port is already in use; nothing was started." >&2; exit 1; }
  done
  [[ "$nodes" -eq 2 ]] && echo "Note: a 2-node cluster needs both nodes for every write; it cannot fail over."
  mkdir -p "$STATE_DIR" logs
  rm -f "$STATE_DIR"/node_*.pid
  echo "${ports[*]}" > "$STATE_DIR/ports"
  # One secret per cluster, kept across restarts; passed by environment so `ps` does not show it.
  if [[ ! -s "$STATE_DIR/secret" ]]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(24))' > "$STATE_DIR/secret")
  fi
  export PICKLEDB_CLUSTER_SECRET
  PICKLEDB_CLUSTER_SECRET=$(cat "$STATE_DIR/secret")
  for ((i = 0; i < nodes; i++)); do
    port=${ports[$i]}
    local peers="" p script=demo_follower.py
    for p in "${ports[@]}"; do [[ "$p" != "$port" ]] && peers+="http://127.0.0.1:$p,"; done
    [[ $i -eq 0 ]] && script=demo_cluster.py
    nohup "$PY" "$script" --port "$port" --peers "${peers%,}" --data-dir "data/node_$port" \
      --heartbeat-interval "$hb" --election-timeout "$et" >> "logs/node_$port.log" 2>&1 < /dev/null &
    echo $! > "$STATE_DIR/node_$port.pid"
  done
  # Wait until every node answers and a leader is elected; otherwise undo everything.
  local deadline=$((SECONDS + 15 + 3 * ${et%.*})) ok=0
  while [[ $SECONDS -lt $deadline ]]; do
    ok=1
    for port in "${ports[@]}"; do http_get "http://127.0.0.1:$port/health" > /dev/null || { ok=0; break; }; done
    if [[ $ok -eq 1 ]] && http_get "http://127.0.0.1:${ports[0]}/status" | grep -q '"leader":"http'; then break; fi
    ok=0
    [[ -z "$(running_pids)" ]] && break
    sleep 0.2
  done
  if [[ $ok -ne 1 ]]; then
    echo "The cluster did not come up; stopping it. Last log lines:" >&2
    for port in "${ports[@]}"; do echo "--- logs/node_$port.log" >&2; tail -n 5 "logs/node_$port.log" >&2 || true; done
    cmd_stop > /dev/null
    exit 1
  fi
  echo "PickleDB Cluster is up ($nodes nodes). Dashboards:"
  for port in "${ports[@]}"; do echo "  http://127.0.0.1:$port/"; done
  echo "Logs: logs/node_<port>.log   Status: ./run_cluster.sh status   Stop: ./run_cluster.sh stop"
  cmd_status || true
}

case "${1:-start}" in
  start) shift || true; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  setup) ensure_venv ;;
  -h|--help|help) usage 0 ;;
  --*) cmd_start "$@" ;;
  *) echo "Unknown command: $1" >&2; usage 2 ;;
esac
