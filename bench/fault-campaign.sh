#!/usr/bin/env bash
# Fault campaign (issue 18): N seeded iterations of each fault kind — crash, region cut,
# asymmetric cut, coordinator crash during a failover, frozen agent, flapping link — each
# on a fresh two-region mesh in network namespaces (500 ms heartbeat, 5 s lease, BIND 9,
# automatic failover) with a client writing through the DNS name every 50 ms and write
# probes every 100 ms (one inside the primary's namespace). Iterations alternate a
# synchronous and an asynchronous standby. Prints each iteration (with its seed) and a
# markdown table: failovers started/completed, moments with two writable primaries
# (goal 0), acknowledged writes lost (sync: goal 0; async: reported), the time from the
# fault to the first write through the name on the new primary, and the longest write
# gap after the fault (median, p95, worst).
#
#   bash bench/fault-campaign.sh [N] [SEED]     (default N=20: about an hour; env KINDS=crash,cut,…)
#
# Runs as root. Every fault loop is bounded; an iteration that cannot finish is reported
# as failed and the campaign goes on, so it can run for as long as N says.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-${N:-20}}"
SEED="${2:-${SEED:-}}"
KINDS="${KINDS:-crash,cut,asymmetric,coordinator,frozen,flapping}"
if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces)" >&2; exit 1; fi
if [ -z "${SKIP_BUILD:-}" ]; then
  bash scripts/install-deps.sh >/dev/null
  cargo build --workspace --bins --quiet
fi
BIN="${CARGO_TARGET_DIR:-target}/debug/drmesh-fault-campaign"
echo "commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores"
"$BIN" --iterations "$N" --kinds "$KINDS" ${SEED:+--seed "$SEED"}
