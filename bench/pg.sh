# The PostgreSQL side of the database benchmarks (bench/db-vs-pgbackrest.sh,
# bench/verify-vs-pgbackrest.sh), sourced from the repository root after bench/lib.sh: a
# local pgbench cluster, queries, WAL archiving through each tool, and the drmesh agent's
# and pgBackRest's configurations. Kept out of lib.sh, whose other users define their own
# sql(). Expects PGBIN, WORK, D (a run's directory), PGDATA, PORT, KIND, SCALE, BIN.

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_pg() { (cd / && runuser -u postgres -- "$@"); }   # from /: the postgres user may not reach this tree
quiet() { "$@" >"$WORK/log" 2>&1 || { echo "failed: $*" >&2; tail -20 "$WORK/log" >&2; return 1; }; }
sql() {   # sql PORT QUERY: one query on a local cluster, unaligned output
  "$PGBIN/psql" -X -A -t -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2"
}
pgbench() { "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres "$@" postgres; }
start_pg() {   # start_pg DATADIR LOG
  as_pg "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 600 start >/dev/null ||
    { echo "could not start the cluster in $1:" >&2; tail -20 "$2" >&2; exit 1; }
}
stop_pg() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 600 stop >/dev/null; }
data_bytes() { du -sb --exclude=pg_wal "$1" | awk '{print $1}'; }   # a data directory without its WAL
FINGERPRINT="select (select count(*) || ' accounts, balance ' || sum(abalance) from pgbench_accounts) || '; ' ||
  (select count(*) || ' tellers, ' || sum(tbalance) from pgbench_tellers) || '; ' ||
  (select count(*) || ' branches, ' || sum(bbalance) from pgbench_branches) || '; ' ||
  (select count(*) || ' history rows' from pgbench_history)"

set_archive() {   # set_archive drmesh|pgbackrest|none: that tool's archive_command, pending WAL pushed
  local cmd
  case $1 in
    drmesh) cmd="$BIN/drmesh-agent --config $D/agent.toml wal-push %p" ;;
    pgbackrest) cmd="pgbackrest --config=$D/pgbackrest.conf --stanza=bench archive-push %p" ;;
    *) cmd=/bin/true ;;
  esac
  sql "$PORT" "alter system set archive_command = '$cmd'" >/dev/null
  sql "$PORT" "select pg_reload_conf()" >/dev/null
  sleep 1
  local end=$((SECONDS + 120))
  while compgen -G "$PGDATA/pg_wal/archive_status/*.ready" >/dev/null; do
    (( SECONDS < end )) || { echo "WAL not archived with $1's archive_command:" >&2; tail -20 "$D/pg.log" >&2; exit 1; }
    sleep 0.5
  done
}

FILLER="substr(md5(random()::text) || md5(random()::text) || md5(random()::text), 1, 84)"
make_pgbench_cluster() {   # initdb -k and the KIND's data (stock|random) in $PGDATA, left running
  as_pg "$PGBIN/initdb" -k -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<EOF

# $(basename "$0")
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$D'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
logging_collector = off
EOF
  start_pg "$PGDATA" "$D/pg.log"
  case $KIND in
    stock) quiet pgbench -i -s "$SCALE" -q ;;
    random)
      quiet pgbench -i -s "$SCALE" -I dt
      sql "$PORT" "insert into pgbench_branches (bid, bbalance, filler)
                     select b, 0, $FILLER from generate_series(1, $SCALE) b" >/dev/null
      sql "$PORT" "insert into pgbench_tellers (tid, bid, tbalance, filler)
                     select t, (t - 1) / 10 + 1, 0, $FILLER from generate_series(1, 10 * $SCALE) t" >/dev/null
      sql "$PORT" "insert into pgbench_accounts (aid, bid, abalance, filler)
                     select a, (a - 1) / 100000 + 1, 0, $FILLER from generate_series(1, 100000 * $SCALE) a" >/dev/null
      quiet pgbench -i -I vp ;;
  esac
  sql "$PORT" checkpoint >/dev/null
}


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
