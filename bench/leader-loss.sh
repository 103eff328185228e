#!/usr/bin/env bash
# Leader loss on an etcd store (issue 19): how long writes stop when the leading
# coordinator dies. Three coordinators (c0, c1, c2: heartbeat_interval 500ms, leader_ttl
# LEADER_TTL) on a three-member etcd 3.4 cluster (m0, m1, m2), all on loopback, on free
# ports, in one temporary directory. Each round:
#   1. waits until all three agree on one leader (status route, `coordinators`);
#   2. `kill -9` of the leader;
#   3. from just before the kill, a write (POST /v1/tokens {"role":"viewer","name":"bench-N"})
#      is sent every 50 ms (curl, 2 s limit each) to the survivor after the killed one
#      (c0 → c1 → c2 → c0) until it answers 201. A follower answers 503 while no leader is
#      known or the dead one does not answer, and forwards the write to the new leader once
#      one leads; the time to that 201 is the measure;
#   4. starts the killed coordinator again on the ports it had and waits until it is a
#      FOLLOWER.
# Prints a markdown table row per round, then the median and the worst.
#
#   bash bench/leader-loss.sh        env: ROUNDS=10 LEADER_TTL=5s IDLE_MAX=30 KEEP=1 (keep the logs)
#
# Binaries: DRMESH_BIN (drmesh-coordinator and drmesh), else target/release, built first
# (SKIP_BUILD=1: not built). Needs etcd (etcd-server), etcdctl (etcd-client), curl, jq.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10} LEADER_TTL=${LEADER_TTL:-5s} IDLE_MAX=${IDLE_MAX:-30}
HEARTBEAT=500ms
POLL=0.05      # s between writes
MAX_WRITES=2000   # writes per round at most (with GIVE_UP, whichever comes first)
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive number" >&2; exit 1; }
[[ $LEADER_TTL =~ ^[0-9]+s$ ]] || { echo "LEADER_TTL must be whole seconds, e.g. 5s" >&2; exit 1; }
GIVE_UP=$((${LEADER_TTL%s} + 30))   # s after a kill without a 201: the round failed
for tool in etcd etcdctl curl jq; do
  command -v "$tool" >/dev/null || {
    echo "missing $tool (apt-get install -y etcd-server etcd-client curl jq)" >&2; exit 1; }
done

if [ -n "${DRMESH_BIN:-}" ]; then
  BIN=$DRMESH_BIN
else
  [ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --release -q -p drmesh-coordinator -p drmesh-cli
  BIN=target/release
fi
BIN=$(cd "$BIN" && pwd)
for b in drmesh-coordinator drmesh; do
  [ -x "$BIN/$b" ] || { echo "no $BIN/$b (set DRMESH_BIN, or build)" >&2; exit 1; }
done
# shellcheck source=bench/lib.sh
. bench/lib.sh   # median, wait_idle

WORK=$(mktemp -d /tmp/drmesh-leader-loss.XXXXXX)
ETCD_PID=() COORD_PID=()   # the processes running now, by member / coordinator index
cleanup() {
  local p
  for p in "${COORD_PID[@]}" "${ETCD_PID[@]}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  for p in "${COORD_PID[@]}" "${ETCD_PID[@]}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap 'cleanup || true' EXIT
trap 'exit 130' INT TERM

die() {   # die MESSAGE [LOG…]: the message and each log's tail
  local l
  echo "leader-loss: $1" >&2
  for l in "${@:2}"; do echo "--- $l" >&2; tail -n 20 "$l" >&2 || true; done
  exit 1
}
free_ports() {   # N distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'EOF'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
EOF
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }   # s from a to b

# etcd: three members, the flags of tests/src/etcd.rs.
read -r -a PORTS <<<"$(free_ports 6)"
CLUSTER= ENDPOINTS=()
for i in 0 1 2; do
  CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:${PORTS[2 * i + 1]}"
  ENDPOINTS+=("http://127.0.0.1:${PORTS[2 * i]}")
done
for i in 0 1 2; do
  client=${ENDPOINTS[i]} peer=http://127.0.0.1:${PORTS[2 * i + 1]}
  etcd --name "m$i" --data-dir "$WORK/m$i.etcd" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token drmesh-bench \
    --heartbeat-interval 100 --election-timeout 1000 \
    --logger zap --log-outputs "$WORK/m$i.log" >"$WORK/m$i.out" 2>&1 &
  ETCD_PID[i]=$!
done
EPS=$(IFS=,; echo "${ENDPOINTS[*]}")
healthy=
for _ in $(seq 60); do   # ≤ 30 s
  if ETCDCTL_API=3 etcdctl --endpoints "$EPS" --command-timeout 2s endpoint health >/dev/null 2>&1; then
    healthy=1; break
  fi
  sleep 0.5
done
[ -n "$healthy" ] || die "etcd not healthy within 30 s" "$WORK"/m?.log

# The CA, the three configs, the admin token (written to etcd directly), the coordinators.
"$BIN/drmesh" ca init --dir "$WORK/ca" >/dev/null
"$BIN/drmesh" ca issue coordinator --host localhost --dir "$WORK/ca" >/dev/null
EPS_TOML=$(printf '"%s", ' "${ENDPOINTS[@]}")
for i in 0 1 2; do
  cat >"$WORK/c$i.toml" <<TOML
http_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
heartbeat_interval = "$HEARTBEAT"

[store]
backend = "etcd"
name = "c$i"
endpoints = [${EPS_TOML%, }]
leader_ttl = "$LEADER_TTL"

[tls]
ca_cert = "ca/ca.pem"
cert = "ca/coordinator.pem"
key = "ca/coordinator.key"
TOML
done
TOKEN=$("$BIN/drmesh-coordinator" --config "$WORK/c0.toml" create-token --role admin --name bench-admin)
[ -n "$TOKEN" ] || die "create-token printed no token"

HTTP=()
start_coord() {   # i: starts coordinator i, waits for its ready file, pins its ports
  local i=$1 ready=$WORK/c$1.ready pid
  rm -f "$ready"
  RUST_LOG=${RUST_LOG:-info} "$BIN/drmesh-coordinator" --config "$WORK/c$i.toml" --ready-file "$ready" \
    >>"$WORK/c$i.log" 2>&1 &
  pid=$!
  COORD_PID[i]=$pid
  for _ in $(seq 300); do   # ≤ 30 s
    jq -e .http "$ready" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "c$i exited" "$WORK/c$i.log"
    sleep 0.1
  done
  jq -e .http "$ready" >/dev/null 2>&1 || die "c$i not ready within 30 s" "$WORK/c$i.log"
  HTTP[i]=$(jq -r .http "$ready")
  # Started again, it listens where it did (the members and the agents know it there).
  sed -i -e "s|^http_listen = .*|http_listen = \"${HTTP[i]}\"|" \
    -e "s|^quic_listen = .*|quic_listen = \"$(jq -r .quic "$ready")\"|" "$WORK/c$i.toml"
}
coordinators() {   # i: the `coordinators` block of coordinator i's status (fails if none)
  curl -sf --max-time 2 -H "Authorization: Bearer $TOKEN" \
    "http://${HTTP[$1]}/v1/backup-recovery/disaster-recovery/status" | jq -ce '.coordinators'
}
wait_leader() {   # prints the leader's index once all three agree on it and on their standings
  local i s leader standing ok
  for _ in $(seq 150); do   # ≤ 30 s (up to 3 × 2 s per try when one hangs)
    ok=1 leader=
    for i in 0 1 2; do
      s=$(coordinators "$i" 2>/dev/null) || { ok=; break; }
      standing=$(jq -r .standing <<<"$s")
      [ -z "$leader" ] && leader=$(jq -r '.leader // empty' <<<"$s")
      if [ -z "$leader" ] || [ "$(jq -r '.leader // empty' <<<"$s")" != "$leader" ] ||
        [ "$standing" != "$([ "c$i" = "$leader" ] && echo LEADER || echo FOLLOWER)" ]; then
        ok=; break
      fi
    done
    [ -n "$ok" ] && { echo "${leader#c}"; return; }
    sleep 0.2
  done
  return 1
}

for i in 0 1 2; do start_coord "$i"; done
LEADER=$(wait_leader) || die "no leader all three agree on within 30 s" "$WORK"/c?.log
wait_idle

echo "leader loss: 3 coordinators on 3 etcd members (loopback), heartbeat_interval $HEARTBEAT," \
  "leader_ttl $LEADER_TTL; drmesh $("$BIN/drmesh-coordinator" --version | awk '{print $NF}')" \
  "(git $(git rev-parse --short HEAD 2>/dev/null || echo '?')); $(etcd --version | head -1)"
echo
echo "| round | killed (term) | write sent to | new leader (term) | answers before the 201 | kill → 201 (s) | restarted → FOLLOWER (s) |"
echo "|---:|---|---|---|---|---:|---:|"
TIMES=()
for r in $(seq "$ROUNDS"); do
  LEADER=$(wait_leader) || die "round $r: no leader all three agree on within 30 s" "$WORK"/c?.log
  old_term=$(coordinators "$LEADER" | jq -r .term)
  to=$(((LEADER + 1) % 3))
  body="{\"role\":\"viewer\",\"name\":\"bench-$r\"}"
  declare -A answers=()
  t0=$EPOCHREALTIME
  kill -9 "${COORD_PID[LEADER]}"
  wait "${COORD_PID[LEADER]}" 2>/dev/null || true
  COORD_PID[LEADER]=
  code= n=0
  while ((n < MAX_WRITES)); do
    n=$((n + 1))
    code=$(curl -s -o "$WORK/write.json" -w '%{http_code}' --max-time 2 -X POST \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" \
      "http://${HTTP[to]}/v1/tokens") || true
    [ "$code" = 201 ] && break
    answers[${code:-000}]=$((${answers[${code:-000}]:-0} + 1))
    [ "$(elapsed "$t0" "$EPOCHREALTIME" | cut -d. -f1)" -lt "$GIVE_UP" ] || break
    sleep "$POLL"
  done
  t1=$EPOCHREALTIME
  [ "$code" = 201 ] ||
    die "round $r: no 201 from c$to within $GIVE_UP s ($n writes; last $code: $(cat "$WORK/write.json" 2>/dev/null))" "$WORK/c$to.log"
  took=$(elapsed "$t0" "$t1")
  TIMES+=("$took")
  now=$(coordinators "$to") || die "round $r: c$to does not answer the status" "$WORK/c$to.log"
  before=
  for code in $(printf '%s\n' "${!answers[@]}" | sort); do before+="${before:+, }${answers[$code]} × $code"; done
  # The killed one again, on its ports, until it follows.
  t2=$EPOCHREALTIME
  start_coord "$LEADER"
  standing=
  for _ in $(seq 150); do   # ≤ 30 s
    standing=$(coordinators "$LEADER" 2>/dev/null | jq -r .standing) || true
    [ "$standing" = FOLLOWER ] && break
    sleep 0.2
  done
  [ "$standing" = FOLLOWER ] || die "round $r: c$LEADER restarted is $standing, not FOLLOWER, after 30 s" "$WORK/c$LEADER.log"
  echo "| $r | c$LEADER ($old_term) | c$to | $(jq -r '"\(.leader) (\(.term))"' <<<"$now") | ${before:-none} | $took | $(elapsed "$t2" "$EPOCHREALTIME") |"
  unset answers
done
echo
echo "leader_ttl $LEADER_TTL, heartbeat_interval $HEARTBEAT, $ROUNDS rounds: kill → 201" \
  "median $(printf '%s\n' "${TIMES[@]}" | median) s, worst $(printf '%s\n' "${TIMES[@]}" | sort -g | tail -1) s"
