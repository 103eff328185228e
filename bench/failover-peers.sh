#!/usr/bin/env bash
# Failover of the peers, measured (issue 5's "for scale" line): pg_auto_failover and Patroni
# with their DEFAULT timing settings, on this machine, loopback only, beside drmesh's
# bench/failover.sh. Time from a fault to the first write accepted afterwards, median and
# worst of RUNS runs each (drmesh: ~1.5 s and ~6.2 s at a 500 ms heartbeat and 5 s lease), for
#   (a) the primary's PostgreSQL killed (kill -9 of the postmaster; its HA agent alive), and
#   (b) the primary's whole node lost (kill -9 of its HA agent's processes and its postmaster),
# and the acknowledged writes missing on the primary afterwards.
#
#   bash bench/failover-peers.sh [RUNS]     (default 3; env PEERS=pgaf,patroni  KINDS=crash,node)
#
# What runs (Debian 12 packages, installed with apt-get when missing; PostgreSQL 15):
#   pg_auto_failover 2.0 (postgresql-15-auto-failover, pg-auto-failover-cli): a monitor and two
#     nodes, each `pg_autoctl create … --auth trust --no-ssl --run` as the postgres user on
#     127.0.0.1 and a free port, default formation settings (number_sync_standbys 0,
#     replication quorum on: synchronous_standby_names 'ANY 1 (…)') and the monitor's default
#     GUCs: health_check_period 5 s, health_check_timeout 5 s, health_check_max_retries 2,
#     health_check_retry_delay 2 s, node_considered_unhealthy_timeout 20 s,
#     primary_demote_timeout 30 s; the keeper's defaults (network_partition_timeout 20 s,
#     postgresql_restart_failure_timeout 20 s, 3 restart retries).
#   Patroni 3.0.2 (patroni) with etcd 3.4 (etcd-server, one member) as its DCS: two nodes,
#     default ttl 30 s, loop_wait 10 s, retry_timeout 10 s, maximum_lag_on_failover 1 MiB,
#     asynchronous replication (synchronous_mode off, the default).
# Each run is a fresh cluster in a fresh directory under /tmp (every port free, 127.0.0.1), the
# first node started (and leading) before the second joins; while the second's pg_basebackup
# waits for its spread checkpoint, a CHECKPOINT every 2 s hurries it (setup only). Once there is
# a primary and a streaming standby, a client (bash + psql, one process per write) inserts a
# numbered row every 50 ms through
#   postgresql://127.0.0.1:P1,127.0.0.1:P2/bench?target_session_attrs=read-write&connect_timeout=1
# and logs each acknowledged write: send time, acknowledgement time ($EPOCHREALTIME) and the
# server's port (inet_server_port()). After 1.5 s of writes the fault is caused, and the client
# keeps writing until SETTLE s (default 30) after the first write acknowledged after the fault
# (a restart in place may still be followed by a failover); a run gives up 120 s after the fault.
# Measured from just before the kill to the acknowledgement of the first write *sent* after it
# (so no write in flight on the old primary counts) by the node that acknowledged the last
# write, i.e. the primary at the end ("old primary": restarted in place; "standby": a failover);
# the first write acknowledged by any node is listed too (it differs when writes resumed on the
# old primary and then stopped again for a failover). Acknowledged writes missing from the
# final primary are counted. Before each run it waits (≤ IDLE_MAX s, default 30) for an idle
# machine (bench/lib.sh). Prints one line per run and a markdown table. Runs as root (apt-get;
# the clusters run as postgres); KEEP=1 keeps the logs. About 1-2 min per run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-${RUNS:-3}}"
PEERS="${PEERS:-pgaf,patroni}"
KINDS="${KINDS:-crash,node}"
GIVE_UP=120   # s after the fault without an acknowledged write: the run failed
SETTLE="${SETTLE:-30}"   # s of writes observed after the first acknowledged one
PGBIN=/usr/lib/postgresql/15/bin
if [ "$(id -u)" != 0 ]; then echo "run as root (apt-get; the clusters run as postgres)" >&2; exit 1; fi

need=()
command -v psql >/dev/null || need+=(postgresql-client-15)
[ -x "$PGBIN/postgres" ] || need+=(postgresql-15)
[[ $PEERS != *pgaf* ]] || command -v pg_autoctl >/dev/null || need+=(postgresql-15-auto-failover pg-auto-failover-cli)
[[ $PEERS != *patroni* ]] || command -v patroni >/dev/null || need+=(patroni)
[[ $PEERS != *patroni* ]] || command -v etcd >/dev/null || need+=(etcd-server)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's packages may start their own services on install; ours use their own ports.
for unit in etcd patroni; do systemctl stop "$unit" 2>/dev/null || true; done

ROOT=$(mktemp -d /tmp/drmesh-peers.XXXXXX)
chown postgres: "$ROOT"
chmod 755 "$ROOT"
PGIDS=()   # process groups we started (each daemon runs under setsid)
DATADIRS=()
cleanup() {
  local g d pid
  [ -n "${CLIENT:-}" ] && kill "$CLIENT" 2>/dev/null || true
  for g in "${PGIDS[@]}"; do kill -9 -- "-$g" 2>/dev/null || true; done
  for d in "${DATADIRS[@]}"; do   # a postmaster not in our process groups
    pid=$(head -1 "$d/postmaster.pid" 2>/dev/null) || continue
    [[ $pid =~ ^[0-9]+$ ]] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$PGBIN/postgres" ] &&
      kill -9 "$pid" 2>/dev/null || true
  done
  for g in "${PGIDS[@]}"; do   # gone (bounded)
    for _ in $(seq 1 50); do   # (zombies waiting for init do not count)
      ps -e -o pgid=,stat= | awk -v g="$g" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit !f}' || break
      sleep 0.1
    done
  done
  PGIDS=() DATADIRS=() CLIENT=
}
trap 'cleanup; [ -n "${KEEP:-}" ] && echo "logs kept in $ROOT" >&2 || rm -rf "$ROOT"' EXIT
trap 'exit 130' INT TERM

free_ports() {   # N distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'EOF'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
EOF
}
daemon() {   # daemon LOGNAME CMD…: run as postgres in its own process group
  setsid runuser -u postgres -- env PATH="$PGBIN:/usr/bin:/bin" HOME="$RUN" XDG_CONFIG_HOME="$RUN/xdg/config" \
    XDG_DATA_HOME="$RUN/xdg/data" XDG_RUNTIME_DIR="$RUN/xdg/run" PGHOST=127.0.0.1 "${@:2}" >"$RUN/$1.log" 2>&1 &
  PGIDS+=($!)
  disown $!
}
postmaster_pid() { head -1 "$1/postmaster.pid" 2>/dev/null; }
sql() { psql -X -qAt -h 127.0.0.1 -p "$1" -U postgres -d "${3:-postgres}" -c "$2" 2>/dev/null; }
median() { sort -g | awk '{a[NR] = $1} END {printf "%.2f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
now() { echo "$EPOCHREALTIME"; }
IDLE_MAX="${IDLE_MAX:-30}"
source bench/lib.sh   # wait_idle: other work on the 2 cores would skew the times

# The client: one psql per write, every 50 ms; logs "id sent acked port" per acknowledged write.
client_start() {   # URL LOG
  ( i=0
    while [ ! -e "$RUN/stop-client" ] && ((i < 100000)); do
      i=$((i + 1)); s=$EPOCHREALTIME
      if p=$(psql -X -qAt "$1" -c "insert into w(id) values ($i) returning inet_server_port()" 2>/dev/null); then
        echo "$i $s $EPOCHREALTIME $p" >>"$2"
      fi
      sleep 0.05
    done ) &
  CLIENT=$!
}
client_stop() { touch "$RUN/stop-client"; wait "$CLIENT" 2>/dev/null || true; CLIENT=; }

# measure OLD_PORT: the fault has just happened at $FAULT. Waits (≤ GIVE_UP s) for a write sent
# after it to be acknowledged, keeps writing SETTLE s more (a restart in place may still be
# followed by a failover), stops the client and sets RESULT to
#   "T_FINAL|NODE|T_FIRST|MISSING": T_FINAL the first write sent after the fault acknowledged
#   by the node that acknowledged the last write (the primary at the end), NODE "old primary"
#   or "standby" for that node, T_FIRST the first write acknowledged by any node (a different
#   node, or an earlier acknowledgement by the same node before a second outage, shows up here),
#   MISSING the acknowledged writes missing on the final primary.
measure() {
  local end=$((SECONDS + GIVE_UP)) first="" final
  while ((SECONDS < end)); do
    first=$(awk -v f="$FAULT" '$2 > f {print; exit}' "$RUN/writes" 2>/dev/null)
    [ -n "$first" ] && break
    sleep 0.2
  done
  [ -n "$first" ] && sleep "$SETTLE"
  client_stop
  [ -n "$first" ] || { RESULT=none; return; }
  final=$(tail -1 "$RUN/writes" | awk '{print $4}')
  awk '{print $1}' "$RUN/writes" | sort >"$RUN/acked"
  sql "$final" "select id from w" bench | sort >"$RUN/stored"
  local missing; missing=$(comm -23 "$RUN/acked" "$RUN/stored" | wc -l)
  local node=standby; [ "$final" = "$1" ] && node="old primary"
  RESULT=$(awk -v f="$FAULT" -v p="$final" -v m="$missing" -v n="$node" '
    $2 > f && t1 == "" {t1 = $3 - f; n1 = $4}
    $2 > f && $4 == p && tf == "" {tf = $3 - f}
    END {printf "%.2f|%s|%.2f%s|%d", tf, n, t1, (n1 == p ? "" : " (other node)"), m}' "$RUN/writes")
}

# ---------------------------------------------------------------- pg_auto_failover
pgaf_state() {   # "port reported_state goal_state" per node, from the monitor
  sql "$PGAF_MON" "select nodeport, reportedstate, goalstate from pgautofailover.node order by nodeid" pg_auto_failover |
    tr '|' ' '
}
pgaf_run() {   # KIND
  local pm p1 p2 uri st prim stby i
  read -r pm p1 p2 < <(free_ports 3)
  PGAF_MON=$pm
  daemon monitor pg_autoctl create monitor --pgdata "$RUN/monitor" --pgport "$pm" --hostname 127.0.0.1 \
    --auth trust --no-ssl --run
  DATADIRS+=("$RUN/monitor")
  # (not `pg_autoctl show uri` meanwhile: two pg_autoctl creating their config folders race)
  uri="postgres://autoctl_node@127.0.0.1:$pm/pg_auto_failover?sslmode=prefer"
  for i in $(seq 1 300); do
    grep -q "Monitor has been successfully initialized" "$RUN/monitor.log" 2>/dev/null &&
      psql -X -qAt "$uri" -c "select 1" >/dev/null 2>&1 && break
    sleep 0.2
  done
  psql -X -qAt "$uri" -c "select 1" >/dev/null 2>&1 || { echo "pg_auto_failover: the monitor did not start" >&2; return 1; }
  local n=1 p
  for p in "$p1" "$p2"; do
    daemon "node$n" pg_autoctl create postgres --pgdata "$RUN/node$n" --pgport "$p" --hostname 127.0.0.1 \
      --name "node$n" --dbname bench --monitor "$uri" --auth trust --no-ssl --pg-hba-lan --run
    DATADIRS+=("$RUN/node$n")
    # the first node becomes the primary before the second one joins
    if ((n == 1)); then
      for i in $(seq 1 600); do pgaf_state | grep -q "^$p1 single single" && break; sleep 0.2; done
    fi
    n=$((n + 1))
  done
  for i in $(seq 1 900); do
    st=$(pgaf_state)
    grep -q " primary primary$" <<<"$st" && grep -q " secondary secondary$" <<<"$st" && break
    # pg_basebackup asks for a spread checkpoint (minutes when idle); CHECKPOINT hurries it
    ((i % 10)) || sql "$p1" checkpoint >/dev/null || true
    sleep 0.2
  done
  prim=$(awk '$2 == "primary" && $3 == "primary" {print $1}' <<<"$st")
  stby=$(awk '$2 == "secondary" && $3 == "secondary" {print $1}' <<<"$st")
  [ -n "$prim" ] && [ -n "$stby" ] || { echo "pg_auto_failover: no primary + secondary: $st" >&2; return 1; }
  sql "$prim" "create table w (id int primary key, at timestamptz default now())" bench >/dev/null
  client_start "postgresql://postgres@127.0.0.1:$p1,127.0.0.1:$p2/bench?target_session_attrs=read-write&connect_timeout=1" "$RUN/writes"
  sleep 1.5
  local pdir="$RUN/node1"; [ "$prim" = "$p2" ] && pdir="$RUN/node2"
  local pgid="${PGIDS[1]}"; [ "$prim" = "$p2" ] && pgid="${PGIDS[2]}"
  local pmpid; pmpid=$(postmaster_pid "$pdir")
  FAULT=$(now)
  case $1 in
    crash) kill -9 "$pmpid" ;;
    node) kill -9 -- "-$pgid"; kill -9 "$pmpid" 2>/dev/null || true ;;
  esac
  measure "$prim"
  pgaf_state >"$RUN/state-after"
}

# ---------------------------------------------------------------- Patroni
patroni_members() {   # "port role state" per member, from a node's REST API
  local r
  for r in "$@"; do
    curl -s -m 1 "http://127.0.0.1:$r/cluster" 2>/dev/null | /usr/bin/python3 -c 'import json, sys
for m in json.load(sys.stdin)["members"]: print(m["port"], m["role"], m["state"])' 2>/dev/null && return
  done
}
patroni_run() {   # KIND
  local ec ep p1 p2 r1 r2 i n st prim stby
  read -r ec ep p1 p2 r1 r2 < <(free_ports 6)
  daemon etcd etcd --name e --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
    --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "e=http://127.0.0.1:$ep"
  for i in $(seq 1 100); do curl -s -m 1 "http://127.0.0.1:$ec/health" | grep -q true && break; sleep 0.2; done
  local ports=("$p1" "$p2") rests=("$r1" "$r2")
  for n in 1 2; do
    # nothing about timing is set: ttl 30, loop_wait 10, retry_timeout 10 are Patroni's defaults
    cat >"$RUN/node$n.yml" <<EOF
scope: bench
name: node$n
restapi:
  listen: 127.0.0.1:${rests[n - 1]}
  connect_address: 127.0.0.1:${rests[n - 1]}
etcd3:
  hosts: 127.0.0.1:$ec
bootstrap:
  dcs: {}
  initdb: [{encoding: UTF8}]
  pg_hba:
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:${ports[n - 1]}
  connect_address: 127.0.0.1:${ports[n - 1]}
  data_dir: $RUN/node$n
  bin_dir: $PGBIN
  pgpass: $RUN/pgpass$n
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator}
  parameters:
    unix_socket_directories: $RUN
EOF
    chown postgres: "$RUN/node$n.yml"
    daemon "node$n" patroni "$RUN/node$n.yml"
    DATADIRS+=("$RUN/node$n")
    if ((n == 1)); then   # the first node bootstraps and leads before the second one joins
      for i in $(seq 1 600); do patroni_members "$r1" | grep -q "^$p1 leader running" && break; sleep 0.2; done
    fi
  done
  for i in $(seq 1 900); do
    st=$(patroni_members "$r1" "$r2")
    grep -q " leader running$" <<<"$st" && grep -qE " replica (running|streaming)$" <<<"$st" && break
    ((i % 10)) || sql "$p1" checkpoint >/dev/null || true   # hurries pg_basebackup's checkpoint
    sleep 0.2
  done
  prim=$(awk '$2 == "leader" {print $1}' <<<"$st")
  stby=$(awk '$2 == "replica" {print $1}' <<<"$st")
  [ -n "$prim" ] && [ -n "$stby" ] || { echo "patroni: no leader + replica: $st" >&2; return 1; }
  sql "$prim" "create database bench" >/dev/null
  sql "$prim" "create table w (id int primary key, at timestamptz default now())" bench >/dev/null
  # the replica has replayed the new table before the client starts
  for i in $(seq 1 100); do sql "$stby" "select 1 from w limit 0" bench >/dev/null && break; sleep 0.2; done
  client_start "postgresql://postgres@127.0.0.1:$p1,127.0.0.1:$p2/bench?target_session_attrs=read-write&connect_timeout=1" "$RUN/writes"
  sleep 1.5
  local pdir="$RUN/node1" pgid="${PGIDS[1]}"
  [ "$prim" = "$p2" ] && pdir="$RUN/node2" pgid="${PGIDS[2]}"
  local pmpid; pmpid=$(postmaster_pid "$pdir")
  FAULT=$(now)
  case $1 in
    crash) kill -9 "$pmpid" ;;
    node) kill -9 -- "-$pgid"; kill -9 "$pmpid" 2>/dev/null || true ;;
  esac
  measure "$prim"
  patroni_members "$r1" "$r2" >"$RUN/state-after"
}

# ---------------------------------------------------------------- main
echo "drmesh $(git rev-parse --short HEAD 2>/dev/null), $(date -u +%FT%TZ), $(nproc) cores;" \
  "$(pg_autoctl --version 2>/dev/null | head -1);" "$(patroni --version 2>/dev/null);" \
  "$(etcd --version 2>/dev/null | head -1); $("$PGBIN/postgres" --version)"
ROWS=()
IFS=, read -ra peer_list <<<"$PEERS"
IFS=, read -ra kind_list <<<"$KINDS"
for peer in "${peer_list[@]}"; do
  for kind in "${kind_list[@]}"; do
    times=() nodes=() firsts=() lost=0
    for r in $(seq 1 "$RUNS"); do
      RUN="$ROOT/$peer-$kind-$r"; mkdir -p "$RUN"/xdg/{run,config,data}; chown -R postgres: "$RUN"; chmod 700 "$RUN/xdg/run"
      RESULT=none
      wait_idle
      "${peer}_run" "$kind" || RESULT=none
      cleanup
      if [ "$RESULT" = none ]; then
        rm -rf "/tmp/drmesh-peers-failed-$peer-$kind-$r"; cp -r "$RUN" "/tmp/drmesh-peers-failed-$peer-$kind-$r" 2>/dev/null || true
        echo "$peer $kind run $r: no write accepted within ${GIVE_UP} s (logs kept in /tmp/drmesh-peers-failed-$peer-$kind-$r)" >&2
        times+=("$GIVE_UP"); nodes+=("none"); firsts+=("none")
        continue
      fi
      IFS='|' read -r t node first missing <<<"$RESULT"
      echo "$peer $kind run $r: writes back for good on the $node ${t} s after the fault" \
        "(first acknowledged write: ${first} s); acknowledged writes lost: $missing" >&2
      times+=("$t"); nodes+=("$node"); firsts+=("$first"); lost=$((lost + missing))
    done
    med=$(printf '%s\n' "${times[@]}" | median)
    worst=$(printf '%s\n' "${times[@]}" | sort -g | tail -1)
    where=$(printf '%s\n' "${nodes[@]}" | sort | uniq -c | awk '{c = $1; $1 = ""; printf "%s%s×%s", (NR > 1 ? ", " : ""), c, $0}')
    name=$peer; [ "$peer" = pgaf ] && name="pg_auto_failover 2.0"; [ "$peer" = patroni ] && name="Patroni 3.0.2"
    desc="(a) primary PostgreSQL killed (kill -9), agent alive"
    [ "$kind" = node ] && desc="(b) primary node lost (agent + PostgreSQL kill -9)"
    ROWS+=("| $name | $desc | $RUNS | $med s | $worst s | $(printf '%s\n' "${times[@]}" | paste -sd, | sed 's/,/, /g') | $where | $(printf '%s\n' "${firsts[@]}" | paste -sd, | sed 's/,/, /g') | $lost |")
  done
done
echo "| peer | fault | runs | median | worst | every run (s) | primary at the end | first write acknowledged by any node, every run (s) | acknowledged writes lost |"
echo "|---|---|---:|---:|---:|---|---|---|---:|"
printf '%s\n' "${ROWS[@]}"
