#!/usr/bin/env bash
# Start, stop, inspect or resize a local PickleDB Cluster.
#   ./run_cluster.sh [start] [--nodes N] [--base-port P] [--heartbeat-interval S] [--election-timeout S]
#   ./run_cluster.sh stop | status | setup
#   ./run_cluster.sh add               start the next node, join it, wait until it votes
#   ./run_cluster.sh remove PORT       take the node out of the cluster, stop it, delete its data
#   ./run_cluster.sh restart PORT      restart one node and wait until it has caught up
#   ./run_cluster.sh rolling-restart   restart every node in turn, followers first, the leader by transfer
set -euo pipefail
cd "$(dirname "$0")"

STATE_DIR=.cluster  # ports (current nodes), initial_ports, timings, secret, node_<port>.pid
VENV=.venv
PY="$VENV/bin/python"
WAIT_SECONDS=30  # for a node to come back, catch up or become a voter

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

usage_error() {
  echo "error: $1" >&2
  echo "Usage: see ./run_cluster.sh --help" >&2
  exit 2
}

no_more_args() {  # no_more_args COMMAND ARGS...: a command that takes no arguments besides --help
  local cmd=$1; shift
  [[ $# -eq 0 ]] && return 0
  case "$1" in -h|--help) usage 0 ;; *) usage_error "'$cmd' takes no argument '$1'" ;; esac
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

url_of() { echo "http://127.0.0.1:$1"; }

cluster_ports() { cat "$STATE_DIR/ports" 2>/dev/null || true; }

node_pid() {  # node_pid PORT -> the pid of that node if it runs
  local f="$STATE_DIR/node_$1.pid" pid
  [[ -e "$f" ]] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
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

cluster_view() {  # cluster_view MODE PORT...: one view of every node's /status (see the modes below)
  "$PY" - "$@" <<'EOF'
import json, sys, urllib.request
mode, ports = sys.argv[1], sys.argv[2:]

def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as r:
            return json.load(r)
    except Exception:
        return None

views = {p: status(p) for p in ports}
leaders = [v for v in views.values() if v and v["is_leader"]]
leader = max(leaders, key=lambda v: v["term"]) if leaders else None

def behind(v):  # entries the leader has committed that this node has not applied yet
    return max(0, leader["commit_index"] - v["applied_index"]) if leader else None

if mode == "print":  # one line per node, saying which followers are still catching up
    for p, v in views.items():
        if v is None:
            print(f"http://127.0.0.1:{p}  down")
            continue
        line = "{node_id}  {role:<9} term={term} commit={commit_index} applied={applied_index} leader={leader}".format(**v)
        if behind(v):
            line += f"  (catching up: {behind(v)} behind)"
        elif not v["leader"]:
            line += "  (no leader known)"
        print(line)
elif mode == "settled":  # every node answers, knows the leader and has applied what it committed
    sys.exit(0 if leader and all(v and v["leader"] and behind(v) == 0 for v in views.values()) else 1)
elif mode == "leader-port":  # the port of the node that leads, if any
    port = next((p for p, v in views.items() if v is leader), None)
    if port is None:
        sys.exit(1)
    print(port)
EOF
}

wait_until() {  # wait_until SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" > /dev/null 2>&1; do
    [[ $SECONDS -ge $deadline ]] && return 1
    sleep 0.2
  done
}

pdbctl() {  # pdbctl ARGS...: the command-line client, asking every node of this cluster
  local urls="" p
  for p in $(cluster_ports); do urls+="$(url_of "$p"),"; done
  PICKLEDB_URLS="${urls%,}" "$PY" pdbctl.py "$@"
}

member_id() {  # member_id PORT -> the id of the member at that port
  pdbctl --json members | "$PY" -c '
import json, sys
url = sys.argv[1]
ids = [m["id"] for m in json.load(sys.stdin)["members"] if m["url"] == url]
if not ids:
    sys.exit(1)
print(ids[0])' "$(url_of "$1")"
}

is_voter() {  # is_voter PORT: the member at that port has been promoted to voter
  pdbctl --json members | "$PY" -c '
import json, sys
sys.exit(0 if any(m["url"] == sys.argv[1] and m["role"] == "voter" for m in json.load(sys.stdin)["members"]) else 1)' \
    "$(url_of "$1")"
}

start_node() {  # start_node PORT: a node of the initial layout bootstraps from --peers, a later one joins
  local port=$1 script=demo_follower.py hb et p
  local -a membership
  read -r hb et < "$STATE_DIR/timings"
  if grep -qw "$port" "$STATE_DIR/initial_ports"; then
    local peers=""
    for p in $(cat "$STATE_DIR/initial_ports"); do [[ "$p" != "$port" ]] && peers+="$(url_of "$p"),"; done
    membership=(--peers "${peers%,}")
    [[ "$port" == "$(cut -d' ' -f1 "$STATE_DIR/initial_ports")" ]] && script=demo_cluster.py
  else
    local members=""
    for p in $(cluster_ports); do [[ "$p" != "$port" ]] && members+="$(url_of "$p"),"; done
    membership=(--join "${members%,}")
  fi
  # One secret per cluster, passed by environment so `ps` does not show it. Node logs rotate
  # (logs/node_<port>.log, .1 ... .5, 10 MB each); the .out file only gets startup errors and crashes.
  PICKLEDB_CLUSTER_SECRET=$(cat "$STATE_DIR/secret") nohup "$PY" "$script" --port "$port" "${membership[@]}" \
    --data-dir "data/node_$port" --heartbeat-interval "$hb" --election-timeout "$et" \
    --log-file "logs/node_$port.log" >> "logs/node_$port.out" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/node_$port.pid"
}

stop_node() {  # stop_node PORT: SIGTERM, SIGKILL after 10 s
  local pid waited=0
  pid=$(node_pid "$1") || { rm -f "$STATE_DIR/node_$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [[ $waited -lt 100 ]]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    echo "Node $1 did not stop in 10 s; killing it."
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE_DIR/node_$1.pid"
}

show_log_tails() {
  local port
  for port in "$@"; do
    echo "--- logs/node_$port.out, logs/node_$port.log" >&2
    tail -n 5 "logs/node_$port.out" "logs/node_$port.log" 2>/dev/null | grep -v '^==>' >&2 || true
  done
}

require_running() {
  [[ -n "$(running_pids)" ]] || { echo "No cluster is running; start it with ./run_cluster.sh start." >&2; exit 1; }
}

port_argument() {  # port_argument COMMAND ARGS...: the one PORT argument, a node of this cluster
  local cmd=$1; shift
  case "${1:-}" in -h|--help) usage 0 ;; "") usage_error "'$cmd' needs the PORT of a node" ;; esac
  [[ $# -eq 1 ]] || usage_error "'$cmd' takes one PORT, not '$*'"
  [[ "$1" =~ ^[0-9]+$ ]] && grep -qw "$1" <<< "$(cluster_ports)" ||
    usage_error "$1 is not a node of this cluster (nodes: $(cluster_ports))"
}

cmd_status() {
  if [[ ! -f "$STATE_DIR/ports" ]]; then echo "No cluster started by this script."; return 1; fi
  cluster_view print $(cluster_ports)
}

cmd_stop() {
  local port
  if [[ -z "$(running_pids)" ]]; then echo "No running nodes."; rm -f "$STATE_DIR"/node_*.pid; return 0; fi
  for port in $(cluster_ports); do
    local pid
    pid=$(node_pid "$port") && kill -TERM "$pid" 2>/dev/null || true
  done
  for port in $(cluster_ports); do stop_node "$port"; done
  rm -f "$STATE_DIR"/node_*.pid
  echo "Cluster stopped."
}

number_option() {  # number_option NAME VALUE: the value after an option, which must be there
  [[ -n "${2:-}" && "$2" != --* ]] || usage_error "$1 needs a value"
}

cmd_start() {
  local nodes="" base="" hb="" et=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --nodes) number_option "$1" "${2:-}"; nodes="$2"; shift 2 ;;
      --base-port) number_option "$1" "${2:-}"; base="$2"; shift 2 ;;
      --heartbeat-interval) number_option "$1" "${2:-}"; hb="$2"; shift 2 ;;
      --election-timeout) number_option "$1" "${2:-}"; et="$2"; shift 2 ;;
      -h|--help) usage 0 ;;
      *) usage_error "unknown option: $1" ;;
    esac
  done
  [[ -z "$nodes" || "$nodes" =~ ^[1-9][0-9]*$ ]] || usage_error "--nodes must be a positive integer, not '$nodes'"
  [[ -z "$base" || "$base" =~ ^[1-9][0-9]{0,4}$ ]] || usage_error "--base-port must be a port number, not '$base'"
  local number='^([0-9]+\.?[0-9]*|\.[0-9]+)$'
  [[ -z "$hb" || "$hb" =~ $number ]] && [[ -z "$et" || "$et" =~ $number ]] ||
    usage_error "--heartbeat-interval and --election-timeout are seconds"
  # An existing cluster (data from an earlier start) keeps its layout unless the command names another one.
  local existing=() port
  for port in $(cluster_ports); do [[ -d "data/node_$port" ]] && existing+=("$port"); done
  local ports=() timings=(2 5)
  if [[ ${#existing[@]} -gt 0 && -f "$STATE_DIR/timings" ]]; then
    read -r -a timings < "$STATE_DIR/timings"  # as last time, unless given
  fi
  hb=${hb:-${timings[0]}}; et=${et:-${timings[1]}}
  if [[ ${#existing[@]} -gt 0 && -z "$nodes" && -z "$base" ]]; then
    ports=("${existing[@]}")
  else
    nodes=${nodes:-3}; base=${base:-4000}
    [[ $((base + nodes - 1)) -le 65535 ]] || usage_error "ports $base-$((base + nodes - 1)) go past 65535"
    for ((port = base; port < base + nodes; port++)); do ports+=("$port"); done
  fi
  if [[ -n "$(running_pids)" ]]; then
    echo "A cluster is already running (ports: $(cluster_ports)). Use './run_cluster.sh stop' first." >&2
    [[ "${ports[*]}" == "${existing[*]}" ]] || echo "To change its size, use './run_cluster.sh add' or './run_cluster.sh remove PORT'." >&2
    exit 1
  fi
  if [[ ${#existing[@]} -gt 0 && "${ports[*]}" != "${existing[*]}" ]]; then
    echo "The cluster in data/ has the nodes ${existing[*]}; starting ${ports[*]} instead would change its membership" >&2
    echo "without consensus. Start it as it is (./run_cluster.sh start), then use './run_cluster.sh add' or" >&2
    echo "'./run_cluster.sh remove PORT'; or stop it and delete data/ and $STATE_DIR/ for a new cluster." >&2
    exit 1
  fi
  ensure_venv
  mkdir -p "$STATE_DIR" logs
  for port in "${ports[@]}"; do
    port_free "$port" || { echo "Port $port is already in use; nothing was started." >&2; exit 1; }
  done
  [[ ${#ports[@]} -eq 2 ]] && echo "Note: a 2-node cluster needs both nodes for every write; it cannot fail over."
  rm -f "$STATE_DIR"/node_*.pid
  echo "${ports[*]}" > "$STATE_DIR/ports"
  [[ ${#existing[@]} -gt 0 && -f "$STATE_DIR/initial_ports" ]] || echo "${ports[*]}" > "$STATE_DIR/initial_ports"
  echo "$hb $et" > "$STATE_DIR/timings"
  if [[ ! -s "$STATE_DIR/secret" ]]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(24))' > "$STATE_DIR/secret")
  fi
  for port in "${ports[@]}"; do start_node "$port"; done
  # Wait until every node answers and a leader is elected; otherwise undo everything.
  local whole_seconds=${et%.*}
  local deadline=$((SECONDS + 15 + 3 * ${whole_seconds:-0})) ok=0
  while [[ $SECONDS -lt $deadline ]]; do
    for port in "${ports[@]}"; do
      [[ -n "$(node_pid "$port")" ]] || { ok=0; break 2; }  # a node exited: its log says why
    done
    if cluster_view leader-port "${ports[@]}" > /dev/null; then ok=1; break; fi
    sleep 0.2
  done
  if [[ $ok -ne 1 ]]; then
    echo "The cluster did not come up; stopping it. Last log lines:" >&2
    show_log_tails "${ports[@]}"
    cmd_stop > /dev/null
    exit 1
  fi
  # Followers learn the commit index with the next heartbeat; wait a moment so status shows them caught up.
  wait_until 10 cluster_view settled "${ports[@]}" || true
  echo "PickleDB Cluster is up (${#ports[@]} nodes). Dashboards:"
  for port in "${ports[@]}"; do echo "  $(url_of "$port")/"; done
  echo "Logs: logs/node_<port>.log   Status: ./run_cluster.sh status   Stop: ./run_cluster.sh stop"
  cmd_status || true
}

wait_caught_up() {  # wait_caught_up PORT: the node answers, knows the leader and has applied its commits
  if ! wait_until "$WAIT_SECONDS" cluster_view settled $(cluster_ports); then
    echo "Node $1 did not catch up within $WAIT_SECONDS s:" >&2
    cmd_status >&2 || true
    show_log_tails "$1"
    exit 1
  fi
}

restart_node() {
  echo "Restarting node $1..."
  stop_node "$1"
  wait_until 10 port_free "$1" || { echo "Port $1 is still in use after the node stopped." >&2; exit 1; }
  start_node "$1"
  wait_caught_up "$1"
}

cmd_add() {
  no_more_args add "$@"
  require_running
  local ports last port
  ports=$(cluster_ports)
  last=$(tr ' ' '\n' <<< "$ports" | sort -n | tail -n 1)
  port=$((last + 1))
  [[ $port -le 65535 ]] || { echo "No port left after $last." >&2; exit 1; }
  [[ ! -e "data/node_$port" ]] || { echo "data/node_$port exists from an earlier node; move it away first." >&2; exit 1; }
  port_free "$port" || { echo "Port $port is already in use; nothing was started." >&2; exit 1; }
  echo "$ports $port" > "$STATE_DIR/ports"
  start_node "$port"
  if ! wait_until "$WAIT_SECONDS" is_voter "$port"; then
    echo "Node $port did not become a voter within $WAIT_SECONDS s; stopping it. Last log lines:" >&2
    show_log_tails "$port"
    stop_node "$port"
    echo "$ports" > "$STATE_DIR/ports"
    exit 1
  fi
  echo "Node $port joined the cluster as a voter ($(url_of "$port")/)."
  cmd_status || true
}

cmd_remove() {
  port_argument remove "$@"
  require_running
  local port=$1 id
  id=$(member_id "$port") || { echo "Node $port is not a member of the cluster." >&2; exit 1; }
  pdbctl members remove "$id"
  stop_node "$port"
  tr ' ' '\n' < "$STATE_DIR/ports" | grep -vx "$port" | tr '\n' ' ' | sed 's/ $//' > "$STATE_DIR/ports.new"
  mv "$STATE_DIR/ports.new" "$STATE_DIR/ports"
  rm -rf "data/node_$port"  # a removed node's copy is stale: the remaining members hold everything
  echo "Node $port ($id) was removed and stopped; its data directory was deleted."
  cmd_status || true
}

cmd_restart() {
  port_argument restart "$@"
  require_running
  restart_node "$1"
  cmd_status || true
}

cmd_rolling_restart() {
  no_more_args rolling-restart "$@"
  require_running
  local leader port
  leader=$(cluster_view leader-port $(cluster_ports)) || { echo "No leader: fix the cluster first." >&2; exit 1; }
  for port in $(cluster_ports); do
    [[ "$port" == "$leader" ]] || restart_node "$port"
  done
  echo "Transferring leadership away from node $leader..."
  pdbctl leader transfer > /dev/null
  if ! wait_until "$WAIT_SECONDS" leader_moved_from "$leader"; then
    echo "Leadership did not move away from node $leader." >&2
    exit 1
  fi
  restart_node "$leader"
  echo "Every node was restarted."
  cmd_status || true
}

leader_moved_from() {
  local now
  now=$(cluster_view leader-port $(cluster_ports)) && [[ "$now" != "$1" ]]
}

case "${1:-start}" in
  start) shift || true; cmd_start "$@" ;;
  stop) shift; no_more_args stop "$@"; cmd_stop ;;
  status) shift; no_more_args status "$@"; cmd_status ;;
  setup) shift; no_more_args setup "$@"; ensure_venv ;;
  add) shift; cmd_add "$@" ;;
  remove) shift; cmd_remove "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  rolling-restart) shift; cmd_rolling_restart "$@" ;;
  -h|--help|help) usage 0 ;;
  --*) cmd_start "$@" ;;
  *) usage_error "unknown command: $1" ;;
esac
