#!/usr/bin/env bash
# Coordinator scale benchmark (issue 2): N agent connections, each with its own
# certificate, heartbeating at 2 Hz against one coordinator for HOLD seconds.
#
#   bash bench/heartbeat-scale.sh [N ...]        (default: 1000 2500 5000)
#
# Prints one JSON line per N and a markdown table. Both coordinator and load generator
# run on this machine (the load generator takes CPU from the same two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
HOLD=${HOLD:-60s}
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 2500 5000)

cargo build --release -q --workspace --bins
BIN=target/release
WORK=$(mktemp -d /tmp/drmesh-bench.XXXXXX)
cleanup() { [ -n "${COORD_PID:-}" ] && kill "$COORD_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

ulimit -n 65536 2>/dev/null || true
$BIN/drmesh ca init --dir "$WORK/ca" >/dev/null
$BIN/drmesh ca issue coordinator --host localhost --dir "$WORK/ca" >/dev/null

results=()
for N in "${COUNTS[@]}"; do
  rm -f "$WORK/state.redb" "$WORK/ready.json"
  cat > "$WORK/coordinator.toml" <<TOML
http_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
store_path = "state.redb"
heartbeat_interval = "500ms"
[tls]
ca_cert = "ca/ca.pem"
cert = "ca/coordinator.pem"
key = "ca/coordinator.key"
TOML
  TOKEN=$($BIN/drmesh-coordinator --config "$WORK/coordinator.toml" create-token --role admin)
  RUST_LOG=warn $BIN/drmesh-coordinator --config "$WORK/coordinator.toml" --ready-file "$WORK/ready.json" \
    > "$WORK/coordinator-$N.log" 2>&1 &
  COORD_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
  HTTP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$WORK/ready.json")
  QUIC=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["quic"])' "$WORK/ready.json")
  line=$(DRMESH_TOKEN=$TOKEN $BIN/drmesh-loadgen --agents "$N" --quic "$QUIC" --ca-dir "$WORK/ca" \
    --cert-dir "$WORK/certs" --url "http://$HTTP" --coordinator-pid "$COORD_PID" --hold "$HOLD")
  echo "$line"
  results+=("$line")
  kill "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true; COORD_PID=
done

echo
echo "| agents | connected | wrongly SUSPECT | heartbeats/s | coordinator CPU (cores) | coordinator RSS (MiB) | p50 update | p99 update |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${results[@]}"; do
  python3 - "$r" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
us = lambda s: f"≤ {s*1e6:.0f} µs"
print(f"| {r['agents']} | {r['connected']} | {int(r['wronglySuspect'])} | {r['heartbeatsPerSecond']:.0f} | {r['coordinatorCpuCores']:.2f} | {r['coordinatorPeakRssMiB']:.0f} | {us(r['updateP50Seconds'])} | {us(r['updateP99Seconds'])} |")
PY
done
