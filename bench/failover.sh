#!/usr/bin/env bash
# Failover benchmark (issue 5): time from a fault to the first write accepted through the
# database's DNS name on the new primary, median and worst of RUNS runs each, for
#   (a) the primary's PostgreSQL killed (kill -9 of the postmaster; its agent alive), and
#   (b) the primary's region cut off (both of its namespace's links down),
#   (c) "cut-leader" (issue 19): three regions, each with a coordinator and an etcd
#       member; the region of the primary, the leader and one member cut off,
# at a 500 ms heartbeat and a 5 s lease, with a synchronous standby; also counts
# acknowledged writes missing on the new primary afterwards (must be 0).
#
#   bash bench/failover.sh [RUNS]        (default 10; env KINDS=crash,cut[,cut-leader])
#
# Each run is a fresh mesh: regions us-west-2 (primary) and us-east-1 (standby) as network
# namespaces, coordinator and BIND 9 (RFC 2136 + TSIG) in the root namespace, and a client
# there that resolves db.drmesh.test. at BIND and inserts a row every 50 ms
# (tests/src/faults.rs, tests/src/splitbrain.rs). Runs as root. About 15 s per run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-${RUNS:-10}}"
KINDS="${KINDS:-crash,cut}"
if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces)" >&2; exit 1; fi
bash scripts/install-deps.sh >/dev/null
cargo build --workspace --bins --quiet
echo "commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores"
target/debug/drmesh-failover-bench --runs "$RUNS" --kinds "$KINDS"
