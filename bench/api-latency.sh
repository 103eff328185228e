#!/usr/bin/env bash
# REST API latency with TLS and without, same run (issue 20): one coordinator (redb) with
# AGENTS simulated agents heartbeating at 2 Hz (drmesh-loadgen), then each route at RATE
# GETs per second for DURATION, open loop (latency counted from each request's planned
# send time), on 16 kept-alive connections — first on plain HTTP, then on HTTPS
# (`http_tls = true`, the coordinator certificate from `drmesh ca issue coordinator`),
# each from a fresh state.
#
#   bash bench/api-latency.sh       env: RATE=200 DURATION=60s AGENTS=200 SKIP_BUILD=1 KEEP=1
#
# Binaries: ${CARGO_TARGET_DIR:-target}/release, built first unless SKIP_BUILD=1.
# Prints one JSON line per measure and a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-200} DURATION=${DURATION:-60s} AGENTS=${AGENTS:-200}
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --workspace --bins
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/drmesh-api-bench.XXXXXX)
cleanup() {
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null
  [ -n "${COORD_PID:-}" ] && kill "$COORD_PID" 2>/dev/null
  wait 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

$BIN/drmesh ca init --dir "$WORK/ca" >/dev/null
$BIN/drmesh ca issue coordinator --host localhost --host 127.0.0.1 --dir "$WORK/ca" >/dev/null
# The hold outlasts both routes' measures and the ramp.
HOLD=$(( 2 * ${DURATION%s} + 120 ))s
ROUTES=(/v1/backup-recovery/disaster-recovery/status /v1/backup-recovery/monitoring/dashboard)
results=()
for MODE in http https; do
  TLS=false; [ "$MODE" = https ] && TLS=true
  cat > "$WORK/coordinator.toml" <<TOML
http_listen = "127.0.0.1:0"
http_tls = $TLS
quic_listen = "127.0.0.1:0"
heartbeat_interval = "500ms"
store_path = "state.redb"
[tls]
ca_cert = "ca/ca.pem"
cert = "ca/coordinator.pem"
key = "ca/coordinator.key"
TOML
  # The same fresh state for both: what the first run left (its agents' DOWN alerts
  # once its load generator stopped) would make the second's answers longer.
  rm -f "$WORK/state.redb" "$WORK/ready.json"
  TOKEN=$($BIN/drmesh-coordinator --config "$WORK/coordinator.toml" create-token --role admin)
  RUST_LOG=warn $BIN/drmesh-coordinator --config "$WORK/coordinator.toml" --ready-file "$WORK/ready.json" \
    > "$WORK/coordinator-$MODE.log" 2>&1 &
  COORD_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/ready.json" ] && break; sleep 0.1; done
  API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$WORK/ready.json")
  QUIC=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["quic"])' "$WORK/ready.json")
  DRMESH_TOKEN=$TOKEN $BIN/drmesh-loadgen --agents "$AGENTS" --quic "$QUIC" --ca-dir "$WORK/ca" \
    --cert-dir "$WORK/certs" --url "$API" --coordinator-pid "$COORD_PID" --hold "$HOLD" \
    > "$WORK/loadgen-$MODE.json" 2> "$WORK/loadgen-$MODE.log" &
  LOAD_PID=$!
  # Until every agent shows in the status.
  for _ in $(seq 300); do
    n=$(curl -s --cacert "$WORK/ca/ca.pem" -H "Authorization: Bearer $TOKEN" \
      "$API/v1/backup-recovery/monitoring/dashboard" | python3 -c 'import json,sys; print(json.load(sys.stdin)["systemHealth"]["agents"]["up"])' 2>/dev/null || echo 0)
    [ "$n" -ge "$AGENTS" ] && break
    sleep 0.2
  done
  [ "$n" -ge "$AGENTS" ] || { echo "only $n of $AGENTS agents up" >&2; exit 1; }
  for ROUTE in "${ROUTES[@]}"; do
    line=$(DRMESH_TOKEN=$TOKEN $BIN/drmesh-api-latency --url "$API" --path "$ROUTE" \
      --ca-cert "$WORK/ca/ca.pem" --rate "$RATE" --duration "$DURATION")
    line=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["mode"]=sys.argv[2]; r["agents"]=int(sys.argv[3]); print(json.dumps(r))' "$line" "$MODE" "$AGENTS")
    echo "$line"
    results+=("$line")
  done
  kill "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null || true; LOAD_PID=
  kill "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true; COORD_PID=
done

echo
echo "| route | scheme | agents | rate (achieved) | requests | errors | p50 | p90 | p99 | max |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${results[@]}"; do
  python3 - "$r" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
route = r["path"].rsplit("/", 1)[-1]
print(f"| {route} | {r['mode']} | {r['agents']} | {r['rate']} ({r['achievedRate']}) | {r['requests']} | {r['errors']} | {r['p50Ms']} ms | {r['p90Ms']} ms | {r['p99Ms']} ms | {r['maxMs']} ms |")
PY
done
python3 - "${results[@]}" <<'PY'
import json, sys
rs = [json.loads(a) for a in sys.argv[1:]]
for route in sorted({r["path"] for r in rs}):
    by = {r["mode"]: r for r in rs if r["path"] == route}
    if "http" in by and "https" in by:
        a, b = by["http"]["p99Ms"], by["https"]["p99Ms"]
        print(f"{route.rsplit('/', 1)[-1]}: TLS changes p99 by {100 * (b - a) / a:+.1f}% ({a} → {b} ms)")
PY
