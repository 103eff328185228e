#!/usr/bin/env bash
# Retention benchmark (issue 7): enforcement + garbage collection over a repository of
# SNAPSHOTS snapshots and SNAPSHOTS x NEW_CHUNKS chunks (default 1,000 and 1,000,000).
#
#   bash bench/retention-gc.sh [RUNS]   (default 3; or RUNS=N)
#   env: SNAPSHOTS=1000 NEW_CHUNKS=1000 SHARED_CHUNKS=500 (per snapshot: chunks of its own,
#        and chunks shared with the one before it), SKIP_BUILD=1, IDLE_MAX=600.
#
# The repository is made once by tests/src/bin/drmesh-repo-synth.rs (untimed): one
# snapshot a day up to now, kind "documents", each storing its own chunks (64 bytes each,
# incompressible) in packs of its own with an index object and a manifest, exactly as a
# backup writes them, and sharing SHARED_CHUNKS of the previous snapshot's chunks. With
# the runbook's policy (full 30d, weekly 12, monthly 12, yearly 7) about 950 snapshots go.
# Per run, on a fresh copy, with a cold cache (drop_caches, as root) and an idle machine:
#   dry run:  `drmesh repo retention --dry-run` (reads every manifest, plans, lists WAL);
#   enforce:  `drmesh repo retention` (the plan, the manifests removed, then garbage
#             collection: every remaining manifest marked, unreferenced packs scheduled,
#             swept, index objects rewritten);
#   again:    the same on the result (nothing to delete: the idempotent steady state).
# Each under /usr/bin/time: wall seconds and peak RSS. Goal: enforce under 60 s and
# 512 MB. No peer: the issue names none for this line (rclone is for replication).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${RUNS:-3}} SNAPSHOTS=${SNAPSHOTS:-1000} NEW_CHUNKS=${NEW_CHUNKS:-1000}
SHARED_CHUNKS=${SHARED_CHUNKS:-500} IDLE_MAX=${IDLE_MAX:-600}
for tool in jq /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y jq time)" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --release -q -p drmesh-cli -p drmesh-tests --bin drmesh --bin drmesh-repo-synth
WORK=$(mktemp -d /tmp/drmesh-retention-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
CACHE=cold
# shellcheck source=bench/lib.sh
. bench/lib.sh

echo "making $SNAPSHOTS snapshots of $NEW_CHUNKS new chunks each (untimed) ..." >&2
made=$(target/release/drmesh-repo-synth --repo "$WORK/master" --snapshots "$SNAPSHOTS" \
  --new-chunks "$NEW_CHUNKS" --shared-chunks "$SHARED_CHUNKS")
echo "repository: $(jq -r '"\(.snapshots) snapshots, \(.chunks) chunks, \(.packs) packs, \(.bytesStored / 1e6 | floor) MB"' <<<"$made")," \
  "$(find "$WORK/master" -type f | wc -l) objects; drmesh $(git rev-parse --short HEAD)"

declare -A T
timed() {   # timed KEY ARGS...: drmesh repo retention ARGS on $WORK/run; T[KEY.wall], T[KEY.rss], JSON in $WORK/out
  local key=$1 wall rss; shift
  wait_idle; drop_caches
  /usr/bin/time -f '%e %M' -o "$WORK/time" target/release/drmesh repo retention --repo "$WORK/run" \
    --output json "$@" >"$WORK/out"
  read -r wall rss <"$WORK/time"
  T[$key.wall]=$wall T[$key.rss]=$(( rss * 1024 / 1000000 ))
}
for RUN in $(seq "$RUNS"); do
  rm -rf "$WORK/run"; cp -a "$WORK/master" "$WORK/run"; sync
  timed "dry.$RUN" --dry-run
  timed "enforce.$RUN"
  summary=$(jq -c '{deleted: (.deleted | length), kept: (.kept | length), archive: (.awaitingArchive | length), packsDeleted, bytesFreed, packsPending, gcError}' "$WORK/out")
  timed "again.$RUN"
  again=$(jq -c '{deleted: (.deleted | length), packsDeleted}' "$WORK/out")
  echo "  run $RUN: dry run ${T[dry.$RUN.wall]} s / ${T[dry.$RUN.rss]} MB; enforce + GC ${T[enforce.$RUN.wall]} s / ${T[enforce.$RUN.rss]} MB $summary; again ${T[again.$RUN.wall]} s / ${T[again.$RUN.rss]} MB $again"
done
med() { for ((r = 1; r <= RUNS; r++)); do echo "${T[$1.$r.$2]}"; done | median; }
peak() { for ((r = 1; r <= RUNS; r++)); do echo "${T[$1.$r.rss]}"; done | sort -n | tail -1; }
echo
echo "$RUNS runs, $CACHE cache, $(nproc) cores; medians of wall time, the highest peak RSS"
echo
echo "| step | wall | peak RSS | goal |"
echo "|---|---:|---:|---|"
echo "| dry run (plan only) | $(med dry wall) s | $(peak dry) MB | |"
ew=$(med enforce wall) er=$(peak enforce)
ok=$(awk -v w="$ew" -v r="$er" 'BEGIN {print (w < 60 && r < 512) ? "met" : "missed"}')
echo "| enforce + GC | $ew s | $er MB | < 60 s and < 512 MB: $ok |"
echo "| again (nothing to delete) | $(med again wall) s | $(peak again) MB | |"
