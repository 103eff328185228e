#!/usr/bin/env bash
# Restorability-test benchmark (issue 6): drmesh's whole verification of a full base backup
# (`drmesh-agent verify`) against pgBackRest 2.45's plain `restore` + start of a full backup
# of the same cluster state, on PostgreSQL 15 pgbench clusters made with `initdb -k`:
#
#   bash bench/verify-vs-pgbackrest.sh [RUNS]   (default 2; or RUNS=N)
#   env: SCALE=60 (pgbench scale, ~1 GB; SCALE=5 for a quick check), KINDS="stock random"
#        (which clusters), SKIP_BUILD=1 (use the existing binary instead of
#        `cargo build --release -p drmesh-agent`), AGENT=target/release/drmesh-agent (the
#        binary to measure; a debug build is flagged in the output), IDLE_MAX=600 (seconds
#        to wait for an idle machine), PGBIN=/usr/lib/postgresql/15/bin. Runs as root
#        (PostgreSQL and both tools run as the postgres user through runuser;
#        drop_caches needs root). Installs pgbackrest with apt-get if it is missing.
#
# Clusters, made once per KIND exactly as bench/db-vs-pgbackrest.sh makes them: "stock" is
# `pgbench -i -s SCALE` (blank-padded filler); "random" the same schema and row count with
# random 84-character fillers (compresses ~2.5x like real data). Listening on 127.0.0.1 only,
# archive_mode = on. Untimed, once per KIND: `drmesh-agent backup full` (archive_command
# `drmesh-agent wal-push %p`; drmesh records every table's row count just after the stop
# point, count_rows on by default) and then, archive_command switched to `pgbackrest
# archive-push %p`, `pgbackrest backup --type=full` (posix repository, compress-type=zst,
# process-max=2, start-fast=y), each after a CHECKPOINT and into a fresh repository; no
# writes in between, so both back up the same data. The cluster is then stopped (its
# conninfo only names the user and database the test connects as).
#
# Per run (the tools alternate order: run 1 drmesh first, run 2 pgBackRest first, ...),
# each test once the machine is idle and after `sync; echo 3 > /proc/sys/vm/drop_caches`:
#   drmesh: `drmesh-agent verify --backup ID --dir DIR --report-json` under /usr/bin/time, as
#     postgres, timed from its launch to its verdict (the JSON outcome line; each output line
#     is stamped as it arrives): every object checked to be there and every needed WAL
#     segment read back against its digest ("objects + WAL"), then the restorability test:
#     restore into DIR with every chunk re-hashed against its id and every file against its
#     SHA-256 (the checksum verdict: a restore that completes has read every chunk intact;
#     a failed one is followed by a separate read-back that names the damage), PostgreSQL
#     started (Unix socket in DIR only, no TCP, fsync off: a throw-away copy) recovering
#     through `drmesh-agent wal-fetch` to the row counts' LSN (or the consistent point when
#     the backup recorded none), polled every 20 ms until out of recovery, the smoke checks
#     (exact row count of every table and amcheck bt_index_check on every B-tree index, over
#     3 connections, largest first). Reported from the JSON: checksumMs ("objects + WAL"),
#     restoreMs, recoveryMs, checksMs; "other" is the time to the verdict not in them. After
#     the verdict, untimed like pgBackRest's: the server stopped and DIR removed (shown as
#     "then stop + rm"). The verdicts must all pass and DIR must be gone afterwards.
#   pgBackRest: one shell script as postgres under /usr/bin/time: `pgbackrest restore
#     --type=immediate --target-action=promote --archive-mode=off` into a new directory
#     (timed: "restore"), then port = a free port and archive_mode = off appended to its
#     postgresql.auto.conf, `pg_ctl start -w` (restore_command `pgbackrest archive-get`),
#     and `select pg_is_in_recovery()` over 127.0.0.1 polled every 0.1 s until false
#     (timed: "start + recovery"). Untimed afterwards: the data compared with the source's
#     (row counts and balance sums), `pg_ctl stop -m immediate`, the directory removed.
#   Neither side adds a sync: each restore's dirty pages are flushed when PostgreSQL starts
#   (it fsyncs the data directory before recovering from a backup), inside "recovery".
# Reported: medians over the runs, ratio drmesh / pgBackRest (whole, and without the checksum
# pass), the goal (drmesh within 1.2× of pgBackRest's restore + start), and the peak RSS of
# the drmesh-agent verify process (GNU time's maximum over the process tree it waits for:
# drmesh-agent and pg_ctl; the server, detached by pg_ctl, and the `drmesh-agent wal-fetch`
# processes it runs are not in it).
# Needs ~5x the cluster free in /tmp (~5 GB at SCALE=60).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${RUNS:-2}} SCALE=${SCALE:-60} KINDS=${KINDS:-stock random}
IDLE_MAX=${IDLE_MAX:-600} PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin} AGENT=${AGENT:-target/release/drmesh-agent}

(( EUID == 0 )) || { echo "run as root (PostgreSQL runs as postgres through runuser; drop_caches)" >&2; exit 1; }
id postgres >/dev/null 2>&1 || { echo "no postgres OS user (apt-get install -y postgresql-15)" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || { echo "no PostgreSQL 15 in $PGBIN (apt-get install -y postgresql-15)" >&2; exit 1; }
for tool in python3 jq runuser /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y time jq?)" >&2; exit 1; }
done
if ! command -v pgbackrest >/dev/null; then
  echo "pgbackrest is missing: installing the Debian package (apt-get install -y pgbackrest) ..." >&2
  apt-get install -y -q pgbackrest >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q pgbackrest >/dev/null; }
fi
for k in $KINDS; do
  case $k in stock | random) ;; *) echo "KINDS: stock and/or random, not $k" >&2; exit 1 ;; esac
done
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --release -q -p drmesh-agent
for _ in $(seq 60); do [ -x "$AGENT" ] && break; sleep 2; done   # being rebuilt?
"$AGENT" verify --help >/dev/null 2>&1 ||
  { echo "$AGENT has no verify command: rebuild it (cargo build --release -p drmesh-agent)" >&2; exit 1; }

need_mb=$(( SCALE * 16 * 5 + 1024 ))
avail_mb=$(df -Pm /tmp | awk 'NR==2 {print $4}')
(( avail_mb > need_mb )) || { echo "need $need_mb MB free in /tmp, have $avail_mb" >&2; exit 1; }
WORK=$(mktemp -d /tmp/drmesh-verify-vs-pgbackrest.XXXXXX)
chmod 755 "$WORK"   # the postgres user runs everything below it
cleanup() {   # every server started below $WORK (source clusters, restored copies, drmesh's throw-away one)
  local pid
  while IFS= read -r pid; do
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$pid")" -m immediate -w stop >/dev/null 2>&1 || true
  done < <(find "$WORK" -maxdepth 4 -name postmaster.pid 2>/dev/null)
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
BIN=$WORK/bin   # a copy: the same binary for every run, even if target/ is rebuilt meanwhile
mkdir "$BIN"
cp "$AGENT" "$BIN/drmesh-agent"
chmod 755 "$BIN" "$BIN/drmesh-agent"

CACHE=cold BAD=0
declare -A T
# shellcheck source=bench/lib.sh
. bench/lib.sh
# shellcheck source=bench/pg.sh
. bench/pg.sh




# pgBackRest's side of a test, as postgres: restore, then start until out of recovery.
cat >"$WORK/pgbr-test.sh" <<'SH'
# pgbr-test.sh CONFIG TARGET PORT LOG PGBIN: prints "RESTORE_S START_S"
set -eu
t0=$(date +%s.%N)
pgbackrest --config="$1" --stanza=bench --pg1-path="$2" --archive-mode=off \
  --type=immediate --target-action=promote restore
t1=$(date +%s.%N)
printf '\n# bench/verify-vs-pgbackrest.sh\nport = %s\narchive_mode = off\n' "$3" >>"$2/postgresql.auto.conf"
"$5/pg_ctl" -D "$2" -l "$4" -w -t 3600 start >/dev/null
until [ "$("$5/psql" -X -A -t -q -h 127.0.0.1 -p "$3" -U postgres -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  sleep 0.1
done
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {printf "%.2f %.2f\n", b - a, c - b}'
SH

timed() {   # timed CMD...: as postgres under /usr/bin/time; WALL RSS_MB into $W $M, stdout in $WORK/out
  local rss
  if ! (cd / && /usr/bin/time -f '%e %M' -o "$WORK/time" runuser -u postgres -- "$@" >"$WORK/out" 2>"$WORK/err"); then
    echo "$KIND run $RUN failed: $*" >&2; tail -20 "$WORK/out" "$WORK/err" >&2; exit 1
  fi
  read -r W rss <"$WORK/time"
  M=$(( rss * 1024 / 1000000 ))
}
sub() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a - b}'; }

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }   # each line with its arrival time
test_drmesh() {   # timed to its verdict (the outcome line), like pgBackRest's side, which stops at "out of recovery"
  local key=$KIND.drmesh.$RUN dir=$D/verify-drmesh outcome verdicts t0 at rss
  wait_idle; drop_caches
  t0=$(date +%s.%N)
  (cd / && /usr/bin/time -f '%e %M' -o "$WORK/time" runuser -u postgres -- \
    "$BIN/drmesh-agent" --config "$D/agent.toml" verify --backup "$DR_ID" --dir "$dir" --report-json 2>"$WORK/err") |
    stamp >"$WORK/out" || { echo "$KIND run $RUN: drmesh-agent verify failed" >&2; tail -20 "$WORK/out" "$WORK/err" >&2; exit 1; }
  read -r W rss <"$WORK/time"
  M=$(( rss * 1024 / 1000000 ))
  at=$(awk '/"outcome"/ {t = $1} END {print t}' "$WORK/out")
  outcome=$(sed 's/^[^ ]* //' "$WORK/out" | jq -R -c 'fromjson? | select(type == "object" and has("outcome")) | .outcome' | tail -1)
  [ -n "$outcome" ] && [ -n "$at" ] || { echo "drmesh-agent verify reported no outcome:" >&2; tail -20 "$WORK/out" "$WORK/err" >&2; exit 1; }
  verdicts=$(jq -r '[.checksumVerification, .fileAccessibility, .restorabilityTest] | join(" ")' <<<"$outcome")
  if [ "$verdicts" != "PASSED Accessible Restorable" ]; then
    BAD=1; echo "  $KIND run $RUN drmesh verify: $verdicts: $(jq -c .details <<<"$outcome")" >&2
  fi
  if [ -e "$dir" ] || pgrep -f -- "-D $dir/" >/dev/null; then
    BAD=1; echo "  $KIND run $RUN drmesh verify left $dir or its server behind" >&2
  fi
  read -r "T[$key.objects]" "T[$key.restore]" "T[$key.recovery]" "T[$key.checks]" < <(jq -r \
    '.timings | [.checksumMs, .restoreMs, .recoveryMs, .checksMs] | map(. / 1000) | @tsv' <<<"$outcome" |
    awk '{printf "%.2f %.2f %.2f %.2f\n", $1, $2, $3, $4}')
  T[$key.whole]=$(sub "$at" "$t0") T[$key.wall]=$W T[$key.rss]=$M
  T[$key.after]=$(sub "$W" "${T[$key.whole]}")
  T[$key.other]=$(awk -v w="${T[$key.whole]}" -v a="${T[$key.objects]}" -v b="${T[$key.restore]}" -v c="${T[$key.recovery]}" \
    -v d="${T[$key.checks]}" 'BEGIN {printf "%.2f", w - a - b - c - d}')
  printf '  %-6s run %s  drmesh verify     %7s s to the verdict: objects + WAL %s, restore with re-hash %s, recovery %s, checks %s, other %s s; then stop + rm %s s; %s; %s MB peak RSS\n' \
    "$KIND" "$RUN" "${T[$key.whole]}" "${T[$key.objects]}" "${T[$key.restore]}" "${T[$key.recovery]}" "${T[$key.checks]}" \
    "${T[$key.other]}" "${T[$key.after]}" "$(jq -r '[.smokeChecks[] | .name + ": " + .detail] | join("; ")' <<<"$outcome")" "$M"
}

test_pgbackrest() {
  local key=$KIND.pgbackrest.$RUN dir=$D/restore-pgbackrest port got t0
  rm -rf "$dir"; as_pg mkdir -m 700 "$dir"
  port=$(free_port)
  wait_idle; drop_caches
  timed sh "$WORK/pgbr-test.sh" "$D/pgbackrest.conf" "$dir" "$port" "$D/restore-pgbackrest.log" "$PGBIN"
  read -r "T[$key.restore]" "T[$key.start]" <"$WORK/out"
  T[$key.whole]=$(awk -v a="${T[$key.restore]}" -v b="${T[$key.start]}" 'BEGIN {printf "%.2f", a + b}')
  T[$key.rss]=$M
  got=$(sql "$port" "$FINGERPRINT")
  [ "$got" = "$FP" ] || { BAD=1; echo "  $KIND run $RUN pgBackRest: restored data DIFFERS: $got (backed up: $FP)" >&2; }
  t0=$(date +%s.%N)
  as_pg "$PGBIN/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null
  rm -rf "$dir"
  printf '  %-6s run %s  pgBackRest        %7s s: restore %s, start + recovery %s s (wall under time: %s s); %s MB peak RSS; untimed: data %s, stop + rm %s s\n' \
    "$KIND" "$RUN" "${T[$key.whole]}" "${T[$key.restore]}" "${T[$key.start]}" "$W" "$M" \
    "$([ "$got" = "$FP" ] && echo OK || echo DIFFERS)" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')"
}

echo "drmesh: $("$BIN/drmesh-agent" --version) ($AGENT, git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.rs' '*.toml' Cargo.lock || echo '+dirty'));" \
  "$(pgbackrest version); PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"
case $AGENT in *release*) ;; *) echo "NOTE: $AGENT is not a release build: its times are not representative";; esac
for KIND in $KINDS; do
  D=$WORK/$KIND PGDATA=$WORK/$KIND/pgdata PORT=$(free_port)
  mkdir -p "$D"; chown postgres: "$D"; chmod 755 "$D"
  echo "making the $KIND cluster (pgbench scale $SCALE) and backing it up with both tools (untimed) ..." >&2
  make_pgbench_cluster
  write_configs
  as_pg mkdir "$D/pgbr-repo" "$D/pgbr-log" "$D/pgbr-lock" "$D/pgbr-spool" "$D/agent"
  as_pg pgbackrest --config="$D/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
  FP=$(sql "$PORT" "$FINGERPRINT")
  set_archive drmesh
  sql "$PORT" checkpoint >/dev/null
  quiet as_pg "$BIN/drmesh-agent" --config "$D/agent.toml" backup full
  DR_ID=$(sed -n 's/^backup \([^ ]*\) completed.*/\1/p' "$WORK/log")
  [ -n "$DR_ID" ] || { echo "no backup id in: $(cat "$WORK/log")" >&2; exit 1; }
  set_archive pgbackrest
  sql "$PORT" checkpoint >/dev/null
  quiet as_pg pgbackrest --config="$D/pgbackrest.conf" --stanza=bench --type=full backup
  [ "$(sql "$PORT" "$FINGERPRINT")" = "$FP" ] || { echo "the $KIND cluster changed between the backups" >&2; exit 1; }
  counts=$(as_pg "$BIN/drmesh-agent" --config "$D/agent.toml" backups --output json | jq -r --arg id "$DR_ID" \
    '.[] | select(.backupId == $id) | .postgres.rowCounts // empty |
     "\(.tables | length) tables at \(.lsn)\(if (.skipped // {} | length) > 0 then ", \(.skipped | length) skipped" else "" end)"')
  stop_pg "$PGDATA"
  echo "$KIND cluster: $(( $(data_bytes "$PGDATA") / 1000000 )) MB without pg_wal (initdb -k, pgbench scale $SCALE; $FP);" \
    "drmesh backup $DR_ID: row counts ${counts:-none (recovery to the consistent point)}"
  for RUN in $(seq "$RUNS"); do
    if (( RUN % 2 )); then test_drmesh; test_pgbackrest; else test_pgbackrest; test_drmesh; fi
  done
  rm -rf "$D"   # the next cluster needs the space
done

med() { for ((r = 1; r <= RUNS; r++)); do echo "${T[$1.$r.$2]}"; done | median; }   # med KIND.TOOL FIELD
x() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / (b > 0 ? b : 0.01)}'; }
met() { awk -v r="$1" 'BEGIN {exit !(r <= 1.2)}' && echo met || echo missed; }
echo
echo "$RUNS runs, pgbench scale $SCALE, $CACHE cache before each test; machine: $(nproc) cores," \
  "$(free -g | awk '/Mem:/ {print $2}') GiB; medians over the runs, seconds"
echo
echo "| cluster | drmesh verify, to the verdict | objects + WAL | restore with re-hash | recovery | checks | other | then stop + rm (untimed) | pgBackRest restore | start + recovery | pgBackRest total | drmesh / pgBackRest | goal ≤ 1.2× |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
PEAK=0
for KIND in $KINDS; do
  dw=$(med "$KIND.drmesh" whole) pt=$(med "$KIND.pgbackrest" whole)
  rw=$(x "$dw" "$pt")
  echo "| $KIND | $dw | $(med "$KIND.drmesh" objects) | $(med "$KIND.drmesh" restore) | $(med "$KIND.drmesh" recovery) |" \
    "$(med "$KIND.drmesh" checks) | $(med "$KIND.drmesh" other) | $(med "$KIND.drmesh" after) | $(med "$KIND.pgbackrest" restore) |" \
    "$(med "$KIND.pgbackrest" start) | $pt | ${rw}× | $(met "$rw") |"
  for ((r = 1; r <= RUNS; r++)); do
    if (( ${T[$KIND.drmesh.$r.rss]} > PEAK )); then PEAK=${T[$KIND.drmesh.$r.rss]}; fi
  done
done
echo
echo "drmesh is timed from its launch to its verdict (the JSON outcome line); \"other\": that time not in its" \
  "JSON timings (process start, snapshot read). Its stop + rm after the verdict, like pgBackRest's, is not in the ratio."
echo "drmesh-agent verify peak RSS (max over the runs and clusters): $PEAK MB"
(( BAD == 0 )) || { echo "a verification failed, left something behind, or a restored cluster's data differs" >&2; exit 1; }
