#!/usr/bin/env bash
# Repository benchmark (issue 3): `drmesh repo` against restic 0.14 (Debian package, its
# defaults) on the same generated tree, local-disk repositories, one tool after the other:
#
#   bash bench/repo-vs-restic.sh [RUNS]   (default 2, at least 2 recommended)
#   env: FILES=20000 BIG=12 (scale the tree down for a quick check), SKIP_BUILD=1 (use the
#        existing target/release/drmesh), IDLE_MAX=600 (seconds to wait for an idle machine)
#
# Tree (deterministic, seeded): FILES files of 4-64 KiB (uniform) over ~200 directories plus
# BIG files of 5-50 MB (evenly spread), each half text-like (prose, JSON, logs) and half
# random bytes, all mtimes 2024-01-15 09:00 UTC: ~1 GB at the defaults. Every run starts from
# fresh repositories and a fresh copy of the tree. Phases, each under /usr/bin/time once the
# machine is idle and after `sync; echo 3 > /proc/sys/vm/drop_caches` ("warm cache" if not):
# full backup; incremental after 1% of the files (by count: one big file, the rest every
# ~100th small file) are rewritten in place (same size and kind, mtime 2024-01-16 09:00);
# restore of the latest snapshot into a new directory, timed until durable (drmesh syncfs's,
# so restic's run includes a `sync`), then `diff -r -q` against the tree; verify reading all
# data (`drmesh repo verify SNAP --read-data`, `restic check --read-data`). The tools
# alternate which goes first. Reported: median wall time, MB/s (MB = 10^6 bytes of file
# data), peak RSS (max over the runs) and the issue's goals. Needs ~5× the tree free in /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-2} FILES=${FILES:-20000} BIG=${BIG:-12} IDLE_MAX=${IDLE_MAX:-600}

for tool in restic python3 openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y time?)" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 10 cargo build --release -q -p drmesh-cli
for _ in $(seq 60); do [ -x target/release/drmesh ] && break; sleep 2; done   # being rebuilt?

tree_mb=$(( (FILES * 35 + BIG * 28000) / 1000 ))
avail_mb=$(df -Pm /tmp | awk 'NR==2 {print $4}')
(( avail_mb > 5 * tree_mb + 1024 )) || { echo "need $((5 * tree_mb + 1024)) MB free in /tmp, have $avail_mb" >&2; exit 1; }
WORK=$(mktemp -d /tmp/drmesh-vs-restic.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
DRMESH=$WORK/drmesh   # a copy: the same binary for every run, even if target/ is rebuilt
cp target/release/drmesh "$DRMESH"
PRISTINE=$WORK/pristine SRC=$WORK/data

cat > "$WORK/dataset.py" <<'PY'
import itertools, json, os, random, sys
mode, root, nfiles, nbig = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(20240115 if mode == "gen" else 20240116)
KiB, MB = 1024, 10**6
T_GEN, T_MUT = 1705309200, 1705395600          # 2024-01-15 / 2024-01-16 09:00 UTC
W = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)]
CW = list(itertools.accumulate(1 / (i + 1) for i in range(len(W))))   # Zipf-like, like prose
def words(k): return " ".join(rng.choices(W, cum_weights=CW, k=k))
POOLS = {  # text-like lines to draw from: prose, JSON records, log lines
  ".txt": [words(rng.randint(5, 20)).capitalize() + "." for _ in range(5000)],
  ".json": [json.dumps({"id": rng.randrange(10**9), "name": words(2), "amount": round(rng.uniform(0, 1e4), 2),
                        "status": rng.choice(["open", "paid", "void"]), "note": words(rng.randint(0, 12))}) + ","
            for _ in range(5000)],
  ".log": [f"2024-01-{rng.randint(1, 14):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z "
           f"{rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} req={rng.randrange(16**8):08x} {words(rng.randint(3, 12))}"
           for _ in range(5000)]}
TEXT = list(POOLS)

def content(ext, n):
    if ext == ".bin":
        return rng.randbytes(n)
    out, size = [], 0
    while size < n:
        part = rng.choices(POOLS[ext], k=max(1, (n - size) // 60))
        out += part; size += sum(map(len, part)) + len(part)
    return "\n".join(out).encode()[:n]

def listing(sub):
    d = os.path.join(root, sub)
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs)

if mode == "gen":
    per_dir, total = -(-nfiles // 200), 0
    for i in range(nfiles):
        ext = ".bin" if i % 2 else TEXT[i // 2 % 3]
        n = rng.randint(4 * KiB, 64 * KiB)
        os.makedirs(f"{root}/small/d{i // per_dir:03d}", exist_ok=True)
        with open(f"{root}/small/d{i // per_dir:03d}/f{i:05d}{ext}", "wb") as f:
            f.write(content(ext, n)); total += n
    for k in range(nbig):
        ext = ".bin" if k % 2 else TEXT[k // 2 % 3]
        n = int((5 + 45 * k / max(1, nbig - 1)) * MB)
        os.makedirs(f"{root}/big", exist_ok=True)
        with open(f"{root}/big/b{k:02d}{ext}", "wb") as f:
            f.write(content(ext, n)); total += n
    for dp, ds, fs in os.walk(root, topdown=False):
        for name in fs + [""]:
            os.utime(os.path.join(dp, name) if name else dp, (T_GEN, T_GEN))
    print(total, f"{nfiles + nbig} files, {total / MB:.0f} MB: {nfiles} of 4-64 KiB in "
          f"{-(-nfiles // per_dir)} directories, {nbig} of 5-50 MB; half text-like (prose, JSON, logs), half random bytes")
else:  # mutate: rewrite 1% of the files in place, same size and kind, newer mtime
    small, big = listing("small"), listing("big")
    n = max(1, round((len(small) + len(big)) / 100))
    chosen = big[:1] + (small[::max(1, len(small) // (n - len(big[:1])))][:n - len(big[:1])] if n > len(big[:1]) else [])
    written = 0
    for p in chosen:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.write(content(os.path.splitext(p)[1], size)); written += size
        os.utime(p, (T_MUT, T_MUT))
    print(written, f"{len(chosen)} files rewritten in place ({len(chosen) - len(big[:1])} small, "
          f"{len(big[:1])} big), {written / MB:.1f} MB")
PY

CACHE=cold NOISE=0
declare -A T R C
# shellcheck source=bench/lib.sh
. bench/lib.sh
# measure TOOL PHASE CMD...: wall s into T[TOOL.PHASE.RUN], peak RSS (MB) into R, CPU s into C;
# NOISE: the most CPU (cores) used by anything else during a phase.
measure() {
  local tool=$1 ph=$2 key=$1.$2.$RUN wall rss u s b0 other; shift 2
  wait_idle; drop_caches; b0=$(busy)
  if ! /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err"; then
    echo "$key failed: $*" >&2; tail -20 "$WORK/err" >&2; exit 1
  fi
  read -r wall rss u s <"$WORK/time"
  T[$key]=$wall R[$key]=$(( rss * 1024 / 1000000 )) C[$key]=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.1f", u + s}')
  other=$(awk -v b="$(( $(busy) - b0 ))" -v c="${C[$key]}" -v t="$wall" \
    'BEGIN {o = (b / 100 - c) / (t > 0 ? t : 0.01); printf "%.2f", (o > 0 ? o : 0)}')
  NOISE=$(awk -v a="$NOISE" -v b="$other" 'BEGIN {print (b > a ? b : a)}')
  printf '  run %s  %-7s %-12s %7s s wall  %6s CPU-s  %4s MB peak RSS  (others: %s cores)\n' \
    "$RUN" "$tool" "$ph" "$wall" "${C[$key]}" "${R[$key]}" "$other"
}
BAD=0
same() {   # same DIR: the restored tree equals the source
  if diff -r -q "$SRC" "$1" >"$WORK/diff"; then echo "          restored tree OK"
  else BAD=1; echo "          restored tree DIFFERS: $(head -3 "$WORK/diff" | paste -sd';')"; fi
  rm -rf "$WORK/restore"
}
DR=(--repo "$WORK/drmesh-repo" --key-file "$WORK/drmesh.key")
export RESTIC_REPOSITORY=$WORK/restic-repo RESTIC_PASSWORD=bench-passphrase
RS=(--cache-dir "$WORK/restic-cache")
phase() {   # phase TOOL PHASE
  case $1.$2 in
    drmesh.full) measure "$@" "$DRMESH" repo backup "$SRC" "${DR[@]}" --id full ;;
    drmesh.incr) measure "$@" "$DRMESH" repo backup "$SRC" "${DR[@]}" --id incr ;;
    restic.full | restic.incr) measure "$@" restic backup "$SRC" "${RS[@]}" ;;
    drmesh.restore) measure "$@" "$DRMESH" repo restore incr --target "$WORK/restore" "${DR[@]}"
      same "$WORK/restore" ;;
    restic.restore) measure "$@" sh -c '"$@" && sync' sh restic restore latest --target "$WORK/restore" "${RS[@]}" -q
      same "$WORK/restore$SRC" ;;
    drmesh.verify) measure "$@" "$DRMESH" repo verify incr --read-data "${DR[@]}" ;;
    restic.verify) measure "$@" restic check --read-data "${RS[@]}" -q ;;
  esac
}

echo "generating the tree ($FILES + $BIG files) ..." >&2
python3 "$WORK/dataset.py" gen "$PRISTINE" "$FILES" "$BIG" >"$WORK/tree"
read -r TREE_BYTES TREE_DESC <"$WORK/tree"
echo "drmesh: $("$DRMESH" --version) (git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.rs' '*.toml' Cargo.lock || echo '+dirty'), release build); $(restic version)"
echo "tree: $TREE_DESC"
for RUN in $(seq "$RUNS"); do
  if (( RUN % 2 )); then ORDER=(drmesh restic); else ORDER=(restic drmesh); fi
  rm -rf "$SRC" "$WORK/drmesh-repo" "$RESTIC_REPOSITORY" "$WORK/restic-cache"
  cp -a "$PRISTINE" "$SRC"
  openssl rand -hex 32 >"$WORK/drmesh.key"
  "$DRMESH" repo init "${DR[@]}" >/dev/null
  restic init "${RS[@]}" -q
  for t in "${ORDER[@]}"; do phase "$t" full; done
  python3 "$WORK/dataset.py" mutate "$SRC" 0 0 >"$WORK/mutation"
  read -r INCR_BYTES INCR_DESC <"$WORK/mutation"
  (( RUN > 1 )) || echo "incremental: $INCR_DESC"
  for p in incr restore verify; do
    for t in "${ORDER[@]}"; do phase "$t" "$p"; done
  done
done

med() {   # med TOOL PHASE: median wall time over the runs
  for ((r = 1; r <= RUNS; r++)); do echo "${T[$1.$2.$r]}"; done | median
}
peak() { for ((r = 1; r <= RUNS; r++)); do echo "${R[$1.$2.$r]}"; done | sort -n | tail -1; }
echo
echo "$RUNS runs, $CACHE cache before each phase; machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB;" \
  "other CPU use during a phase: at most $NOISE cores"
echo
echo "| phase | drmesh wall | restic wall | speedup | drmesh MB/s | restic MB/s | drmesh peak RSS | restic peak RSS | goal | |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
DR_PEAK=0
for p in full incr restore verify; do
  d=$(med drmesh $p) r=$(med restic $p)
  case $p in
    full) label="full backup ($((TREE_BYTES / 1000000)) MB)" bytes=$TREE_BYTES want=3 goal="≥ 3×" ;;
    incr) label="incremental ($(awk -v b="$INCR_BYTES" 'BEGIN {printf "%.1f", b / 1e6}') MB rewritten)" bytes=$INCR_BYTES want=2 goal="≤ ½ restic's time" ;;
    restore) label="restore latest, synced" bytes=$TREE_BYTES want=2 goal="≥ 2×" ;;
    verify) label="verify, read all data" bytes=$TREE_BYTES want=2 goal="≥ 2×" ;;
  esac
  ratio=$(awk -v d="$d" -v r="$r" 'BEGIN {printf "%.1f", r / (d > 0 ? d : 0.01)}')
  met=$(awk -v d="$d" -v r="$r" -v w="$want" 'BEGIN {print (r >= w * d ? "met" : "missed")}')
  (( $(peak drmesh $p) <= DR_PEAK )) || DR_PEAK=$(peak drmesh $p)
  echo "| $label | $d s | $r s | $ratio× | $(rate "$bytes" "$d") | $(rate "$bytes" "$r") | $(peak drmesh $p) MB | $(peak restic $p) MB | $goal | $met |"
done
echo
echo "drmesh peak RSS over all phases: $DR_PEAK MB (goal: under 200 MB): $( (( DR_PEAK < 200 )) && echo met || echo missed)"
(( BAD == 0 )) || { echo "a restored tree differs from the source" >&2; exit 1; }
