#!/usr/bin/env bash
# Coordinator scale benchmark (issue 2): N agent connections, each with its own
# certificate, heartbeating at 2 Hz against one coordinator for HOLD seconds.
#
#   bash bench/heartbeat-scale.sh [N ...]        (default: 1000 2500 5000)
#   STORE=etcd bash bench/heartbeat-scale.sh 5000 (the coordinator on a 3-member etcd
#                                                  cluster on loopback, as the leader)
#   PIN=1 ...    gives the coordinator core 0 to itself and the load generator and etcd the
#                other (taskset): "under one core" measured literally, and the load
#                generator cannot starve the coordinator (nor the reverse)
#   FREEZES=5 [FREEZE_FOR=300ms] ...  freezes the load generator (SIGSTOP/SIGCONT) 5 times in
#                the hold: all agents silent at once, then all answering together, as after
#                a network blip at the coordinator; none may go SUSPECT for a freeze shorter
#                than suspect_after minus an interval (1 s - 0.5 s here)
#   KEEP=1 ...   keeps the work directory (the coordinator's log: every SUSPECT with its reason)
#
# Prints one JSON line per N and a markdown table. Both coordinator and load generator
# run on this machine (the load generator takes CPU from the same two cores): the
# "loadgen late" column counts agents of the load generator that themselves sent a
# heartbeat two intervals late during the hold (it starved), which the coordinator then
# rightly marks SUSPECT. With etcd, "etcd writes/s" is the cluster's committed write
# transactions (etcd_mvcc_txn_total + etcd_mvcc_put_total on one member) per second of
# the hold: heartbeats are never written, only state changes. "socket drops" are datagrams
# the kernel dropped at the coordinator's QUIC socket during the hold, "QUIC lost packets"
# the load generator's packets QUIC declared lost (a heartbeat's acknowledgement too late,
# or never), and "reconnects" the connection attempts the ramp repeated. "peak queue" is
# the fullest the coordinator's socket receive queue was, sampled every 10 ms; the JSON
# line also lists each moment of drops (coordinatorDropEvents) and each moment the load
# generator's process was not scheduled for 50 ms or more (lateWakeups, with the
# hypervisor's steal time meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
HOLD=${HOLD:-60s}
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 2500 5000)

STORE=${STORE:-redb}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --workspace --bins
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/drmesh-bench.XXXXXX)
ETCD_PIDS=()
COORD_CPU=(); LOAD_CPU=()
if [ "${PIN:-0}" = 1 ]; then
  command -v taskset >/dev/null || { echo "taskset is missing: apt-get install -y util-linux" >&2; exit 1; }
  COORD_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1)
fi
cleanup() {
  [ -n "${COORD_PID:-}" ] && kill "$COORD_PID" 2>/dev/null
  for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# redb: a top-level key (before [tls]); etcd: a [store] table (after it).
STORE_TOP='store_path = "state.redb"'
STORE_TABLE=''
if [ "$STORE" = etcd ]; then
  command -v etcd >/dev/null || { echo "etcd is missing: apt-get install -y etcd-server" >&2; exit 1; }
  CLIENT=(); PEER=(); CLUSTER=""
  for i in 0 1 2; do CLIENT+=("$(free_port)"); PEER+=("$(free_port)"); CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:${PEER[$i]}"; done
  for i in 0 1 2; do
    "${LOAD_CPU[@]}" etcd --name "m$i" --data-dir "$WORK/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:${CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PEER[$i]}" \
      --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token drmesh-bench \
      --heartbeat-interval 100 --election-timeout 1000 > "$WORK/etcd-$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  ETCD0=${CLIENT[0]}
  ENDPOINTS="\"http://127.0.0.1:${CLIENT[0]}\", \"http://127.0.0.1:${CLIENT[1]}\", \"http://127.0.0.1:${CLIENT[2]}\""
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ETCD0/health" | grep -q true && break; sleep 0.2; done
fi

ulimit -n 65536 2>/dev/null || true
$BIN/drmesh ca init --dir "$WORK/ca" >/dev/null
$BIN/drmesh ca issue coordinator --host localhost --dir "$WORK/ca" >/dev/null

results=()
for N in "${COUNTS[@]}"; do
  rm -f "$WORK/state.redb" "$WORK/ready.json"
  if [ "$STORE" = etcd ]; then
    STORE_TOP=''
    STORE_TABLE="[store]
backend = \"etcd\"
endpoints = [$ENDPOINTS]
prefix = \"/bench-$N/\"
name = \"bench\""
  fi
  cat > "$WORK/coordinator.toml" <<TOML
http_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
heartbeat_interval = "500ms"
$STORE_TOP
[tls]
ca_cert = "ca/ca.pem"
cert = "ca/coordinator.pem"
key = "ca/coordinator.key"
$STORE_TABLE
TOML
  TOKEN=$($BIN/drmesh-coordinator --config "$WORK/coordinator.toml" create-token --role admin)
  RUST_LOG=warn "${COORD_CPU[@]}" $BIN/drmesh-coordinator --config "$WORK/coordinator.toml" --ready-file "$WORK/ready.json" \
    > "$WORK/coordinator-$N.log" 2>&1 &
  COORD_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
  HTTP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$WORK/ready.json")
  QUIC=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["quic"])' "$WORK/ready.json")
  if [ "$STORE" = etcd ]; then
    # Agents are sent away until it leads.
    for _ in $(seq 100); do
      curl -s -H "Authorization: Bearer $TOKEN" "http://$HTTP/v1/backup-recovery/disaster-recovery/status" \
        | grep -q '"standing":"LEADER"' && break
      sleep 0.1
    done
  fi
  ETCD_ARGS=(); [ "$STORE" = etcd ] && ETCD_ARGS=(--etcd-metrics "http://127.0.0.1:$ETCD0/metrics")
  line=$(DRMESH_TOKEN=$TOKEN "${LOAD_CPU[@]}" $BIN/drmesh-loadgen --agents "$N" --quic "$QUIC" --ca-dir "$WORK/ca" \
    --cert-dir "$WORK/certs" --url "http://$HTTP" --coordinator-pid "$COORD_PID" --hold "$HOLD" \
    --freezes "${FREEZES:-0}" --freeze-for "${FREEZE_FOR:-300ms}" "${ETCD_ARGS[@]}")
  line=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["store"]=sys.argv[2]; print(json.dumps(r))' "$line" "$STORE")
  echo "$line"
  results+=("$line")
  kill "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true; COORD_PID=
done

echo
echo "| store | agents | connected | wrongly SUSPECT | loadgen late (longest gap) | heartbeats/s | coordinator CPU (cores) | coordinator RSS (MiB) | p50 update | p99 update | etcd writes/s | socket drops (peak queue) | QUIC lost packets | ramp (reconnects) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${results[@]}"; do
  python3 - "$r" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
us = lambda s: f"≤ {s*1e6:.0f} µs"
w = r.get("etcdWritesPerSecond")
print(f"| {r.get('store', 'redb')} | {r['agents']} | {r['connected']} | {int(r['wronglySuspect'])} | {r.get('loadgenLateAgents', '-')} ({r.get('loadgenLongestGapMs', '-')} ms) | {r['heartbeatsPerSecond']:.0f} | {r['coordinatorCpuCores']:.2f} | {r['coordinatorPeakRssMiB']:.0f} | {us(r['updateP50Seconds'])} | {us(r['updateP99Seconds'])} | {'-' if w is None else f'{w:.1f}'} | {r.get('coordinatorSocketDrops', '-')} ({r.get('coordinatorPeakRxQueueBytes', 0)/2**20:.1f} MiB) | {r.get('loadgenLostPackets', '-')} | {r['rampSeconds']:.0f} s ({r.get('rampReconnects', '-')}) |")
PY
done
