#!/usr/bin/env bash
# Replication benchmark (issue 7): copying a repository to an S3 server, drmesh against
# `rclone copy` of the same objects, in the same run on the same data and server.
#
#   bash bench/replication-vs-rclone.sh [RUNS]   (default 3; or RUNS=N)
#   env: DATA_MB=1024 (incompressible files backed up into the source repository),
#        SKIP_BUILD=1, IDLE_MAX=600.
#
# Untimed: DATA_MB of random files (16 MiB each, plus 2,000 small ones) backed up with
# `drmesh repo backup` into a local repository; `moto_server` (the tests' S3 server) on
# 127.0.0.1. Per run, into a fresh bucket each, with a cold cache and an idle machine:
#   drmesh:  `drmesh repo copy --repo LOCAL --to s3://…` (what a replication round does:
#            list both sides, read every chunk the destination lacks checking its id,
#            re-seal it for the destination, pack, upload, then verify the snapshot
#            there; 4 chunks in flight);
#   rclone:  `rclone copy LOCAL s3:…` (the repository's files as they are; default 4
#            transfers, sizes and checksums compared);
#   and each again onto its own result (nothing to copy: the steady state of a round).
# Each under /usr/bin/time: wall seconds, peak RSS; MB/s over the repository's bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${RUNS:-3}} DATA_MB=${DATA_MB:-1024} IDLE_MAX=${IDLE_MAX:-600}
for tool in jq /usr/bin/time rclone moto_server curl; do
  command -v "$tool" >/dev/null || {
    echo "missing $tool (apt-get install -y jq time rclone curl; pip install 'moto[server]')" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --release -q -p drmesh-cli --bin drmesh
WORK=$(mktemp -d /tmp/drmesh-replication-bench.XXXXXX)
MOTO_PID=
cleanup() { [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
CACHE=cold
# shellcheck source=bench/lib.sh
. bench/lib.sh

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
ENDPOINT=http://127.0.0.1:$PORT
for _ in $(seq 100); do curl -s -o /dev/null "$ENDPOINT" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
# A custom CA bundle in the environment breaks rclone's S3 client (plain HTTP here anyway).
unset AWS_CA_BUNDLE
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=$ENDPOINT \
  RCLONE_CONFIG_S3_ACCESS_KEY_ID=testing RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=testing \
  RCLONE_CONFIG_S3_REGION=us-east-1 RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true
S3OPTS=(--to-option "endpoint=$ENDPOINT" --to-option allow_http=true --to-option region=us-east-1
  --to-option access_key_id=testing --to-option secret_access_key=testing)

echo "making $DATA_MB MB of random files and backing them up (untimed) ..." >&2
mkdir -p "$WORK/data/small"
for i in $(seq $((DATA_MB / 16))); do head -c $((16 << 20)) /dev/urandom >"$WORK/data/big-$i.bin"; done
for i in $(seq 2000); do head -c $((RANDOM % 8192 + 1)) /dev/urandom >"$WORK/data/small/$i"; done
target/release/drmesh repo init --repo "$WORK/repo" >/dev/null
target/release/drmesh repo backup --repo "$WORK/repo" --kind documents "$WORK/data" >/dev/null
REPO_BYTES=$(du -sb "$WORK/repo" | cut -f1)
echo "source repository: $((REPO_BYTES / 1000000)) MB in $(find "$WORK/repo" -type f | wc -l) objects; drmesh $(git rev-parse --short HEAD), $(rclone version | head -1)"

declare -A T
timed() {   # timed KEY CMD...: T[KEY.wall], T[KEY.rss]
  local key=$1 wall rss; shift
  wait_idle; drop_caches
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || {
    cat "$WORK/out" "$WORK/err" >&2; exit 1; }
  read -r wall rss <"$WORK/time"
  T[$key.wall]=$wall T[$key.rss]=$(( rss * 1024 / 1000000 ))
}
for RUN in $(seq "$RUNS"); do
  for b in "drmesh-$RUN" "rclone-$RUN"; do curl -s -X PUT "$ENDPOINT/$b" >/dev/null; done
  timed "drmesh.$RUN" target/release/drmesh repo copy --repo "$WORK/repo" \
    --to "s3://drmesh-$RUN/repo" "${S3OPTS[@]}" --output json
  copied=$(jq -c '{snapshotsCopied, bytesCopied}' "$WORK/out")
  timed "drmesh-again.$RUN" target/release/drmesh repo copy --repo "$WORK/repo" \
    --to "s3://drmesh-$RUN/repo" "${S3OPTS[@]}" --output json
  timed "rclone.$RUN" rclone copy "$WORK/repo" "s3:rclone-$RUN/repo"
  timed "rclone-again.$RUN" rclone copy "$WORK/repo" "s3:rclone-$RUN/repo"
  echo "  run $RUN: drmesh ${T[drmesh.$RUN.wall]} s / ${T[drmesh.$RUN.rss]} MB $copied, again ${T[drmesh-again.$RUN.wall]} s;" \
    "rclone ${T[rclone.$RUN.wall]} s / ${T[rclone.$RUN.rss]} MB, again ${T[rclone-again.$RUN.wall]} s"
  # Free the server's memory before the next run.
  for b in "drmesh-$RUN" "rclone-$RUN"; do rclone purge "s3:$b" >/dev/null 2>&1 || true; done
done
med() { for ((r = 1; r <= RUNS; r++)); do echo "${T[$1.$r.$2]}"; done | median; }
d=$(med drmesh wall) r=$(med rclone wall)
echo
echo "| tool | copy (s) | MB/s | peak RSS (MB) | again, nothing to copy (s) |"
echo "|---|---:|---:|---:|---:|"
echo "| drmesh repo copy | $d | $(rate "$REPO_BYTES" "$d") | $(med drmesh rss) | $(med drmesh-again wall) |"
echo "| rclone copy | $r | $(rate "$REPO_BYTES" "$r") | $(med rclone rss) | $(med rclone-again wall) |"
echo
echo "drmesh / rclone: $(awk -v a="$d" -v b="$r" 'BEGIN {printf "%.2f", a / b}')x (medians of $RUNS runs, $CACHE cache, $DATA_MB MB of data)"
