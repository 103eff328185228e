# Shared by the benchmark scripts (sourced from the repository root):
# cold caches, waiting for an idle machine, medians and rates, and the drmesh agent's and
# pgBackRest's configurations of the database benchmarks.
# Expects IDLE_MAX; sets CACHE=warm when caches cannot be dropped (not root).

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || CACHE=warm; }
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }   # jiffies, 1/100 s
wait_idle() {   # other work on the 2 cores would skew the times: wait (≤ IDLE_MAX s) for < 0.15 cores
  local b end=$((SECONDS + IDLE_MAX))
  while (( SECONDS < end )); do b=$(busy); sleep 2; (( $(busy) - b < 30 )) && return; sleep 3; done
  echo "  the machine is still busy; measuring anyway" >&2
}
median() {   # the median of the numbers on stdin, one per line
  sort -g | awk '{a[NR] = $1} END {printf "%.2f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
rate() { awk -v b="$1" -v t="$2" 'BEGIN {printf "%.0f", b / 1e6 / (t > 0 ? t : 0.01)}'; }   # MB/s

# The agent (no coordinator: one-shot commands) and pgBackRest (stanza "bench") on the
# cluster at $PGDATA, port $PORT, binaries in $PGBIN; both write under $D.
write_configs() {
  cat >"$D/agent.toml" <<EOF
id = "db-1"
region = "us-west-2"
coordinator = "127.0.0.1:1"
data_dir = "$D/agent"
[tls]
ca_cert = "ca.pem"
cert = "agent.pem"
key = "agent.key"
[postgres]
conninfo = "host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
[database]
data_dir = "$PGDATA"
repository = "$D/drmesh-repo"
pg_bin_dir = "$PGBIN"
EOF
  cat >"$D/pgbackrest.conf" <<EOF
[global]
repo1-type=posix
repo1-path=$D/pgbr-repo
repo1-retention-full=99
compress-type=zst
process-max=2
start-fast=y
log-path=$D/pgbr-log
lock-path=$D/pgbr-lock
spool-path=$D/pgbr-spool
log-level-console=warn

[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$D
EOF
  chown postgres: "$D/agent.toml" "$D/pgbackrest.conf"
}
