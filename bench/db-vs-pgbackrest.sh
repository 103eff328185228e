#!/usr/bin/env bash
# PostgreSQL base-backup benchmark (issue 4): `drmesh-agent backup|restore` against pgBackRest
# 2.45 (Debian package; posix repository, compress-type=zst, process-max=2) and pg_basebackup
# (-Ft --compress=server-zstd:workers=2) on PostgreSQL 15 clusters made with `initdb -k`:
#
#   bash bench/db-vs-pgbackrest.sh [RUNS]   (default 2, at least 2 recommended; or RUNS=N)
#   env: SCALE=60 (pgbench scale, ~1 GB; SCALE=5 for a quick check), KINDS="stock random"
#        (which clusters), PGBENCH_T=20 (seconds of pgbench before the incrementals),
#        SKIP_BUILD=1 (use the existing target/release binaries), IDLE_MAX=600 (seconds to
#        wait for an idle machine). Runs as root (PostgreSQL and every tool run as the
#        postgres user through runuser; drop_caches needs root). Installs pgbackrest with
#        apt-get if it is missing.
#
# Clusters, made once per run of this script, each copied afresh for every run: "stock" is
# `pgbench -i -s SCALE` (blank-padded filler, compresses ~36x); "random" is the same schema
# and row count with every filler random (`-I dt`, rows inserted with filler =
# substr(md5(random()::text)||md5(random()::text)||md5(random()::text),1,84), then `-I vp`),
# which compresses ~2.5x like real data. Both run with archive_mode = on; before a tool's
# backups its own archive_command is set (ALTER SYSTEM + reload, pending segments pushed):
# `drmesh-agent wal-push %p`, `pgbackrest archive-push %p`, or /bin/true for pg_basebackup
# (which streams its WAL) and while pgbench runs. Every tool gets a fresh repository per run
# and asks for an immediate checkpoint (drmesh always does; pgBackRest start-fast=y,
# pg_basebackup -c fast), and a CHECKPOINT runs (untimed) before each backup.
#
# Phases, each under /usr/bin/time as the postgres user once the machine is idle and after
# `sync; echo 3 > /proc/sys/vm/drop_caches`, timed until durable (`CMD && sync`); the tools
# alternate order (run 1 drmesh, pgBackRest, pg_basebackup; run 2 the reverse; ...):
#   full backup;
#   incremental after `pgbench -T PGBENCH_T` (pg_basebackup: n/a, PostgreSQL 15 has none);
#   restore into a new directory: drmesh-agent restore --to (the incremental; recovery via
#     wal-fetch), pgbackrest restore --pg1-path (latest, the incremental), pg_basebackup's
#     tars (the full) extracted with zstd and tar;
#   verify: drmesh repo verify INCR --read-data; pgbackrest verify (2.45 has no --set: every
#     backup and WAL file in the repository); pg_verifybackup of the extracted copy against
#     its backup_manifest (PostgreSQL 15's pg_verifybackup cannot read tar backups).
# Then, untimed, every restored cluster is started on a new port, must leave recovery and
# show the data it was backed up with (row counts and balance sums), and is removed.
# Reported: median wall time, MB/s (MB = 10^6 bytes of the data directory without pg_wal),
# stored bytes (what the backup added to the repository, WAL archive excluded; for
# pg_basebackup the output directory), peak RSS (max over the runs; GNU time's maximum over
# the process tree, i.e. the largest single process), and the issue's goals.
# Needs ~10x the cluster free in /tmp (~10 GB at SCALE=60).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${RUNS:-2}} SCALE=${SCALE:-60} KINDS=${KINDS:-stock random} PGBENCH_T=${PGBENCH_T:-20}
IDLE_MAX=${IDLE_MAX:-600} PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

(( EUID == 0 )) || { echo "run as root (PostgreSQL runs as postgres through runuser; drop_caches)" >&2; exit 1; }
id postgres >/dev/null 2>&1 || { echo "no postgres OS user (apt-get install -y postgresql-15)" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || { echo "no PostgreSQL 15 in $PGBIN (apt-get install -y postgresql-15)" >&2; exit 1; }
for tool in python3 zstd tar runuser /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y time zstd?)" >&2; exit 1; }
done
if ! command -v pgbackrest >/dev/null; then
  echo "pgbackrest is missing: installing the Debian package (apt-get install -y pgbackrest) ..." >&2
  apt-get install -y -q pgbackrest >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q pgbackrest >/dev/null; }
fi
for k in $KINDS; do
  case $k in stock | random) ;; *) echo "KINDS: stock and/or random, not $k" >&2; exit 1 ;; esac
done
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --release -q -p drmesh-agent -p drmesh-cli
for _ in $(seq 60); do   # being rebuilt?
  [ -x target/release/drmesh-agent ] && [ -x target/release/drmesh ] && break; sleep 2
done

need_mb=$(( SCALE * 16 * 10 + 1024 ))
avail_mb=$(df -Pm /tmp | awk 'NR==2 {print $4}')
(( avail_mb > need_mb )) || { echo "need $need_mb MB free in /tmp, have $avail_mb" >&2; exit 1; }
WORK=$(mktemp -d /tmp/drmesh-vs-pgbackrest.XXXXXX)
chmod 755 "$WORK"   # the postgres user runs everything below it
cleanup() {
  local pid
  for pid in "$WORK"/*/*/postmaster.pid; do
    [ -e "$pid" ] || continue
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$pid")" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
BIN=$WORK/bin   # copies: the same binaries for every run, even if target/ is rebuilt
mkdir "$BIN"
cp target/release/drmesh-agent target/release/drmesh "$BIN/"
chmod 755 "$BIN" "$BIN"/*

CACHE=cold NOISE=0 BAD=0
declare -A T R C S B
# shellcheck source=bench/lib.sh
. bench/lib.sh
# shellcheck source=bench/pg.sh
. bench/pg.sh
dir_bytes() { { du -sb "$@" 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'; }   # 0 if missing

# measure TOOL PHASE CMD...: as postgres, `CMD && sync`; wall s into T[KIND.TOOL.PHASE.RUN],
# peak RSS (MB) into R, CPU s into C; NOISE: the most CPU (cores) used by anything else during
# a drmesh or pgBackRest phase (pg_basebackup's work is mostly the server's, so not counted).
measure() {
  local tool=$1 ph=$2 key=$KIND.$1.$2.$RUN wall rss u s b0 other; shift 2
  wait_idle; drop_caches; b0=$(busy)
  if ! (cd / && /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" runuser -u postgres -- sh -c '"$@" && sync' sh "$@" \
      >"$WORK/out" 2>"$WORK/err"); then
    echo "$key failed: $*" >&2; tail -20 "$WORK/out" "$WORK/err" >&2; exit 1
  fi
  read -r wall rss u s <"$WORK/time"
  T[$key]=$wall R[$key]=$(( rss * 1024 / 1000000 )) C[$key]=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.1f", u + s}')
  other=$(awk -v b="$(( $(busy) - b0 ))" -v c="${C[$key]}" -v t="$wall" \
    'BEGIN {o = (b / 100 - c) / (t > 0 ? t : 0.01); printf "%.2f", (o > 0 ? o : 0)}')
  [ "$tool" = pg_basebackup ] || NOISE=$(awk -v a="$NOISE" -v b="$other" 'BEGIN {print (b > a ? b : a)}')
  printf '  %-6s run %s  %-13s %-7s %7s s wall  %6s CPU-s  %4s MB peak RSS  (others: %s cores)\n' \
    "$KIND" "$RUN" "$tool" "$ph" "$wall" "${C[$key]}" "${R[$key]}" "$other"
}


phase() {   # phase TOOL PHASE
  local key=$KIND.$1.$2.$RUN
  case $1.$2 in
    *.full | drmesh.incr | pgbackrest.incr)
      sql "$PORT" checkpoint >/dev/null
      [ "$1" = pg_basebackup ] && set_archive none || set_archive "$1" ;;
  esac
  case $1.$2 in
    drmesh.full | drmesh.incr)
      local before; before=$(( $(dir_bytes "$D/drmesh-repo") - $(dir_bytes "$D/drmesh-repo/wal") ))
      measure "$@" "$BIN/drmesh-agent" --config "$D/agent.toml" backup "$2"
      S[$key]=$(( $(dir_bytes "$D/drmesh-repo") - $(dir_bytes "$D/drmesh-repo/wal") - before ))
      DR_ID=$(sed -n 's/^backup \([^ ]*\) completed.*/\1/p' "$WORK/out")
      [ -n "$DR_ID" ] || { echo "no backup id in: $(cat "$WORK/out")" >&2; exit 1; } ;;
    pgbackrest.full | pgbackrest.incr)
      local before; before=$(dir_bytes "$D/pgbr-repo/backup")
      measure "$@" pgbackrest --config="$D/pgbackrest.conf" --stanza=bench --type="$2" backup
      S[$key]=$(( $(dir_bytes "$D/pgbr-repo/backup") - before )) ;;
    pg_basebackup.full)
      measure "$@" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$D/pgbb" -Ft -c fast \
        --compress=server-zstd:workers=2
      S[$key]=$(dir_bytes "$D/pgbb") ;;
    pg_basebackup.incr) ;;   # PostgreSQL 15 has no incremental base backup
    drmesh.restore)
      as_pg mkdir -m 700 "$D/restore-drmesh"
      RPORT_drmesh=$(free_port)
      measure "$@" "$BIN/drmesh-agent" --config "$D/agent.toml" restore --to "$D/restore-drmesh" \
        --backup "$DR_ID" --port "$RPORT_drmesh" ;;
    pgbackrest.restore)
      as_pg mkdir -m 700 "$D/restore-pgbackrest"
      measure "$@" pgbackrest --config="$D/pgbackrest.conf" --stanza=bench --pg1-path="$D/restore-pgbackrest" \
        --archive-mode=off restore ;;
    pg_basebackup.restore)
      as_pg mkdir -m 700 "$D/restore-pg_basebackup"
      measure "$@" sh "$WORK/pgbb-restore.sh" "$D/pgbb" "$D/restore-pg_basebackup" ;;
    drmesh.verify) measure "$@" "$BIN/drmesh" repo verify "$DR_ID" --read-data --repo "$D/drmesh-repo" ;;
    pgbackrest.verify) measure "$@" pgbackrest --config="$D/pgbackrest.conf" --stanza=bench verify ;;
    pg_basebackup.verify)
      measure "$@" "$PGBIN/pg_verifybackup" -m "$D/pgbb/backup_manifest" "$D/restore-pg_basebackup" ;;
  esac
}

# check_restored TOOL EXPECTED: start the restored cluster on a new port, wait for the end of
# recovery, compare its data with what was backed up, stop and remove it (untimed).
check_restored() {
  local tool=$1 want=$2 dir=$D/restore-$1 port got end
  if [ "$tool" = drmesh ]; then port=$RPORT_drmesh   # drmesh-agent restore --port set it
  else port=$(free_port); printf "\nport = %s\narchive_mode = off\n" "$port" >>"$dir/postgresql.auto.conf"; fi
  start_pg "$dir" "$D/restore-$tool.log"
  end=$((SECONDS + 600))
  until [ "$(sql "$port" 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    (( SECONDS < end )) || { echo "$tool: restored cluster still in recovery" >&2; tail -20 "$D/restore-$tool.log" >&2; exit 1; }
    sleep 1
  done
  got=$(sql "$port" "$FINGERPRINT")
  if [ "$got" = "$want" ]; then echo "          $tool: restored cluster started, recovered, data OK"
  else BAD=1; echo "          $tool: restored cluster's data DIFFERS: $got (backed up: $want)"; fi
  stop_pg "$dir"
  rm -rf "$dir" "$D/restore-$tool.log"
}

cat >"$WORK/pgbb-restore.sh" <<'SH'
# pgbb-restore.sh BACKUP_DIR TARGET: pg_basebackup -Ft's tars into a data directory
set -e
zstd -q -d -c "$1/base.tar.zst" | tar -xf - -C "$2"
mkdir -p "$2/pg_wal"
tar -xf "$1/pg_wal.tar" -C "$2/pg_wal"
SH

make_cluster() {   # make_cluster: the KIND's cluster, then a pristine copy to start each run from
  make_pgbench_cluster
  stop_pg "$PGDATA"
  cp -a "$PGDATA" "$D/pristine"
  rm -rf "$PGDATA"
}

TOOLS=(drmesh pgbackrest pg_basebackup)
echo "drmesh: $("$BIN/drmesh-agent" --version) (git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.rs' '*.toml' Cargo.lock || echo '+dirty'), release build);" \
  "$(pgbackrest version); $("$PGBIN/pg_basebackup" --version)"
for KIND in $KINDS; do
  D=$WORK/$KIND PGDATA=$WORK/$KIND/pgdata PORT=$(free_port)
  mkdir -p "$D"; chown postgres: "$D"; chmod 755 "$D"
  echo "making the $KIND cluster (pgbench scale $SCALE) ..." >&2
  make_cluster
  write_configs
  echo "$KIND cluster: $(( $(data_bytes "$D/pristine") / 1000000 )) MB without pg_wal (initdb -k, pgbench scale $SCALE)"
  for RUN in $(seq "$RUNS"); do
    if (( RUN % 2 )); then ORDER=("${TOOLS[@]}"); else ORDER=(pg_basebackup pgbackrest drmesh); fi
    rm -rf "$PGDATA" "$D"/drmesh-repo "$D"/pgbr-* "$D"/pgbb "$D"/agent
    cp -a "$D/pristine" "$PGDATA"
    as_pg mkdir "$D/pgbr-repo" "$D/pgbr-log" "$D/pgbr-lock" "$D/pgbr-spool" "$D/agent"
    start_pg "$PGDATA" "$D/pg.log"
    as_pg pgbackrest --config="$D/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
    FP_FULL=$(sql "$PORT" "$FINGERPRINT")
    B[$KIND.full]=$(data_bytes "$PGDATA")
    for t in "${ORDER[@]}"; do phase "$t" full; done

    set_archive none
    pgbench -T "$PGBENCH_T" >"$WORK/pgbench" 2>&1 || { cat "$WORK/pgbench" >&2; exit 1; }
    (( RUN > 1 )) || echo "  $KIND incremental after pgbench -T $PGBENCH_T:" \
      "$(sed -n 's/^number of transactions actually processed: //p' "$WORK/pgbench") transactions"
    FP_INCR=$(sql "$PORT" "$FINGERPRINT")
    B[$KIND.incr]=$(data_bytes "$PGDATA")
    for p in incr restore verify; do
      for t in "${ORDER[@]}"; do phase "$t" "$p"; done
    done
    for t in "${ORDER[@]}"; do
      if [ "$t" = pg_basebackup ]; then check_restored "$t" "$FP_FULL"; else check_restored "$t" "$FP_INCR"; fi
    done
    stop_pg "$PGDATA"
  done
  rm -rf "$D"   # the next cluster needs the space
done

med() {   # med KEY-WITHOUT-RUN [ARRAY]: median over the runs (T by default)
  local -n arr=${2:-T}
  for ((r = 1; r <= RUNS; r++)); do echo "${arr[$1.$r]}"; done | median
}
peak() { for ((r = 1; r <= RUNS; r++)); do echo "${R[$1.$r]}"; done | sort -n | tail -1; }
mb() { awk -v b="$1" 'BEGIN {if (b < 1e7) printf "%.1f", b / 1e6; else printf "%.0f", b / 1e6}'; }
has() { [ -n "${T[$1.1]:-}" ]; }
echo
echo "$RUNS runs, pgbench scale $SCALE, $CACHE cache before each phase; machine: $(nproc) cores," \
  "$(free -g | awk '/Mem:/ {print $2}') GiB; other CPU use during a drmesh or pgBackRest phase: at most $NOISE cores"
echo
echo "| cluster | phase | drmesh wall | pgBackRest wall | pg_basebackup wall | drmesh MB/s | pgBackRest MB/s | pg_basebackup MB/s | drmesh stored | pgBackRest stored | pg_basebackup stored | drmesh peak RSS | pgBackRest peak RSS | pg_basebackup peak RSS |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
AGENT_PEAK=0
for KIND in $KINDS; do
  for p in full incr restore verify; do
    row="| $KIND | $p"
    case $p in
      full) row="| $KIND | full backup ($(mb "${B[$KIND.full]}") MB)" ;;
      incr) row="| $KIND | incremental after pgbench -T $PGBENCH_T" ;;
      restore) row="| $KIND | restore, synced" ;;
      verify) row="| $KIND | verify" ;;
    esac
    walls="" rates="" stored="" rss=""
    for t in "${TOOLS[@]}"; do
      k=$KIND.$t.$p
      if has "$k"; then
        bytes=${B[$KIND.incr]}; [ "$p" = full ] || [ "$t" = pg_basebackup ] && bytes=${B[$KIND.full]}
        walls+=" | $(med "$k") s" rates+=" | $(rate "$bytes" "$(med "$k")")" rss+=" | $(peak "$k") MB"
        if [ -n "${S[$k.1]:-}" ]; then stored+=" | $(mb "$(med "$k" S)") MB"; else stored+=" | –"; fi
        if [ "$t" = drmesh ] && [ "$p" != verify ] && (( $(peak "$k") > AGENT_PEAK )); then AGENT_PEAK=$(peak "$k"); fi
      else
        walls+=" | n/a" rates+=" | n/a" stored+=" | n/a" rss+=" | n/a"
      fi
    done
    echo "$row$walls$rates$stored$rss |"
  done
done
echo
echo "pg_basebackup: incremental n/a (PostgreSQL 15 has none); its restore and verify are of the full backup."
echo
echo "| cluster | goal | drmesh | reference | |"
echo "|---|---|---:|---:|---|"
goal() {   # goal KIND TEXT DRMESH REFERENCE MET(0/1)
  echo "| $1 | $2 | $3 | $4 | $( (( $5 )) && echo met || echo missed) |"
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a >= b)}' && echo 1 || echo 0; }
for KIND in $KINDS; do
  df=$(med "$KIND.drmesh.full") rf=$(med "$KIND.pgbackrest.full") bf=$(med "$KIND.pg_basebackup.full")
  di=$(med "$KIND.drmesh.incr") ri=$(med "$KIND.pgbackrest.incr")
  dr=$(med "$KIND.drmesh.restore") rr=$(med "$KIND.pgbackrest.restore")
  dsf=$(med "$KIND.drmesh.full" S) rsf=$(med "$KIND.pgbackrest.full" S)
  dsi=$(med "$KIND.drmesh.incr" S) rsi=$(med "$KIND.pgbackrest.incr" S)
  x() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f×", a / (b > 0 ? b : 0.01)}'; }
  goal "$KIND" "full backup: ≥ 3× pgBackRest's throughput" "$(x "$rf" "$df")" "$df s vs $rf s" "$(ge "$rf" "$(awk -v d="$df" 'BEGIN {print 3 * d}')")"
  goal "$KIND" "full backup: no slower than pg_basebackup" "$df s" "$bf s" "$(ge "$bf" "$df")"
  goal "$KIND" "incremental: ≤ ⅓ of pgBackRest's time" "$di s" "$ri s ($(x "$ri" "$di"))" "$(ge "$ri" "$(awk -v d="$di" 'BEGIN {print 3 * d}')")"
  goal "$KIND" "incremental: stores ≤ ½ of pgBackRest's" "$(mb "$dsi") MB" "$(mb "$rsi") MB" "$(ge "$rsi" "$(awk -v d="$dsi" 'BEGIN {print 2 * d}')")"
  goal "$KIND" "restore: ≥ 1.5× pgBackRest" "$(x "$rr" "$dr")" "$dr s vs $rr s" "$(ge "$rr" "$(awk -v d="$dr" 'BEGIN {print 1.5 * d}')")"
  goal "$KIND" "full backup stored: ≤ pgBackRest's" "$(mb "$dsf") MB" "$(mb "$rsf") MB" "$(ge "$rsf" "$dsf")"
done
echo
echo "drmesh-agent peak RSS over its backups and restores: $AGENT_PEAK MB (goal: under 256 MB): $( (( AGENT_PEAK < 256 )) && echo met || echo missed)"
(( BAD == 0 )) || { echo "a restored cluster's data differs from what was backed up" >&2; exit 1; }
