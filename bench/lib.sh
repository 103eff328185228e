# Shared by the benchmark scripts (sourced from the repository root):
# cold caches, waiting for an idle machine, medians and rates.
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
