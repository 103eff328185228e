#!/usr/bin/env bash
# Document repository benchmark (issue 3): `drmesh repo` against restic on the same
# generated "documents" data set, both encrypted and compressed, on local-disk
# repositories, one tool after the other:
#
#   bash bench/repo-vs-restic.sh [SIZE_MB]       (default: 2048)
#
# Phases: full backup, incremental after changing ~1% of the data, restore of the
# latest snapshot (checked against the source with diff -r), verify reading all data.
# Each phase runs under /usr/bin/time (wall time, peak RSS) after dropping the page
# cache when the kernel lets us (otherwise the output says "warm cache").
# Needs about 4 × SIZE_MB free under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-2048}

for tool in restic python3 openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y time?)" >&2; exit 1; }
done
nice -n 10 cargo build --release -q -p drmesh-cli
DRMESH=$PWD/target/release/drmesh

avail_mb=$(df -Pm /tmp | awk 'NR==2 {print $4}')
(( avail_mb > 4 * SIZE_MB + 1024 )) || { echo "need $((4 * SIZE_MB + 1024)) MB free in /tmp, have $avail_mb" >&2; exit 1; }
WORK=$(mktemp -d /tmp/drmesh-vs-restic.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/data

# --- Data set: deterministic (seeded) mix of documents --------------------------------
# 25% small text/JSON documents (2-200 KiB, log-uniform), 15% compressible logs/CSV
# (1-16 MiB), 60% incompressible "media" files (8-96 MiB). `mutate` changes ~1%.
cat > "$WORK/dataset.py" <<'PY'
import json, math, os, random, sys
mode, root, size_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(42 if mode == "gen" else 43)
MiB = 1 << 20
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 11)))
         for _ in range(6000)]
cum, acc = [], 0.0
for i in range(len(words)):
    acc += 1.0 / (i + 1)          # Zipf-like word frequencies, like prose
    cum.append(acc)

def prose(n):
    w = rng.choices(words, cum_weights=cum, k=n // 6 + 1)
    return "\n".join(" ".join(w[i:i + 12]) + "." for i in range(0, len(w), 12)).encode()[:n]

def records(n):
    out, size = [], 0
    while size < n:
        r = {"id": rng.randrange(10**9), "customer": " ".join(rng.choices(words, cum_weights=cum, k=2)),
             "amount": round(rng.uniform(0, 10000), 2), "status": rng.choice(["open", "paid", "void"]),
             "date": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
             "note": " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(0, 15)))}
        out.append(r); size += 120
    return json.dumps(out, indent=1).encode()[:n]

def document():
    size = int(math.exp(rng.uniform(math.log(2 << 10), math.log(200 << 10))))
    return records(size) if rng.random() < 0.4 else prose(size)

def log(n):
    lines, size = [], 0
    while size < n:
        l = (f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z "
             f"{rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} req={rng.randrange(16**8):08x} "
             + " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(3, 14))))
        lines.append(l); size += len(l) + 1
    return "\n".join(lines).encode()[:n]

def write(path, data, append=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab" if append else "wb") as f:
        f.write(data)

def random_file(path, n, append=False):
    for off in range(0, n, 4 * MiB):
        write(path, rng.randbytes(min(4 * MiB, n - off)), append or off > 0)

def files(sub):
    d = os.path.join(root, sub)
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs)

if mode == "gen":
    budget, i = size_mb * MiB // 4, 0
    while budget > 0:
        data = document(); budget -= len(data)
        write(f"{root}/docs/d{i // 100:03d}/doc{i:05d}" + (".json" if data[:1] == b"[" else ".txt"), data); i += 1
    budget, j = size_mb * MiB * 15 // 100, 0
    while budget > 0:
        n = min(budget, rng.randint(1, 16) * MiB); budget -= n
        write(f"{root}/logs/app{j:03d}.log", log(n)); j += 1
    budget, k = size_mb * MiB - size_mb * MiB // 4 - size_mb * MiB * 15 // 100, 0
    while budget > 0:
        n = min(budget, rng.randint(8, 96) * MiB); budget -= n
        random_file(f"{root}/media/file{k:03d}.bin", n); k += 1
    print(f"{i} documents of 2-200 KiB (prose and JSON), {j} logs of 1-16 MiB, "
          f"{k} incompressible files of 8-96 MiB")
else:  # mutate: ~1% of the data
    one, written = size_mb * MiB // 100, 0
    docs, logs, media = files("docs"), files("logs"), files("media")
    for p in rng.sample(docs, 40):                   # rewrite 40 documents
        data = document(); write(p, data); written += len(data)
    for p in rng.sample(docs, 10):                   # delete 10
        if os.path.exists(p): os.remove(p)
    for p in rng.sample(logs, min(5, len(logs))):    # append to 5 logs
        data = log(one // 20); write(p, b"\n" + data, append=True); written += len(data)
    for p in rng.sample(media, 2):                   # append to 2 media files
        random_file(p, one // 10, append=True); written += one // 10
    for p in rng.sample(media, 2):                   # overwrite 64 KiB in the middle of 2
        with open(p, "r+b") as f:
            f.seek(os.path.getsize(p) // 2); f.write(rng.randbytes(64 << 10)); written += 64 << 10
    random_file(f"{root}/media/new.bin", one // 4); written += one // 4
    for n in range(20):                              # 20 new documents
        data = document(); write(f"{root}/docs/new/doc{n:02d}.txt", data); written += len(data)
    print(f"changed 40 documents, deleted 10, appended to 5 logs and 2 media files, "
          f"overwrote 64 KiB in 2 media files, added 21 files: {written / MiB:.1f} MiB written")
PY

CACHE=cold NOISE=0
declare -A T R C
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || CACHE=warm; }
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }   # jiffies, 1/100 s
wait_idle() {   # other work on the 2 cores would skew the times: wait (≤ 10 min) for < 0.15 cores
  local b
  for _ in $(seq 60); do b=$(busy); sleep 2; (( $(busy) - b < 30 )) && return; sleep 8; done
  echo "  the machine is still busy; measuring anyway" >&2
}
# measure NAME CMD...: wall seconds into T[NAME], CPU seconds (user+sys) into C[NAME],
# peak RSS (MiB) into R[NAME]; NOISE: the most CPU (cores) used by anything else in a phase.
measure() {
  local name=$1 rss u s b0 other; shift
  wait_idle; drop_caches; b0=$(busy)
  if ! /usr/bin/time -f '%e %M %U %S' -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
    echo "$name failed: $*" >&2; tail -20 "$WORK/$name.err" >&2; exit 1
  fi
  read -r T[$name] rss u s <"$WORK/$name.time"
  R[$name]=$((rss / 1024)); C[$name]=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.1f", u + s}')
  other=$(awk -v b="$(( $(busy) - b0 ))" -v c="${C[$name]}" -v t="${T[$name]}" \
    'BEGIN {o = (b / 100 - c) / (t > 0 ? t : 0.01); printf "%.2f", (o > 0 ? o : 0)}')
  NOISE=$(awk -v a="$NOISE" -v b="$other" 'BEGIN {print (b > a ? b : a)}')
  echo "  $name: ${T[$name]} s, ${C[$name]} CPU-s, ${R[$name]} MiB peak RSS (others: $other cores)" >&2
}
repo_bytes() { du -sb "$1" | cut -f1; }
data_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }

echo "generating ${SIZE_MB} MiB in $SRC ..." >&2
DATASET=$(python3 "$WORK/dataset.py" gen "$SRC" "$SIZE_MB")
FULL_BYTES=$(data_bytes "$SRC"); FILES=$(find "$SRC" -type f | wc -l)
sleep 3   # both tools re-read files modified within a second or two of a backup

openssl rand -hex 32 >"$WORK/drmesh.key"
DR=(--repo "$WORK/drmesh-repo" --key-file "$WORK/drmesh.key")
export RESTIC_REPOSITORY=$WORK/restic-repo RESTIC_PASSWORD=bench-passphrase
RS=(--cache-dir "$WORK/restic-cache" --compression auto)
"$DRMESH" repo init "${DR[@]}" >/dev/null
restic init --repository-version 2 "${RS[@]}" -q

measure d_full "$DRMESH" repo backup "$SRC" "${DR[@]}" --id full1
measure r_full restic backup "$SRC" "${RS[@]}"
D_FULL=$(repo_bytes "$WORK/drmesh-repo"); R_FULL=$(repo_bytes "$RESTIC_REPOSITORY")

MUTATION=$(python3 "$WORK/dataset.py" mutate "$SRC" "$SIZE_MB")
INCR_BYTES=$(data_bytes "$SRC")
sleep 3
measure d_incr "$DRMESH" repo backup "$SRC" "${DR[@]}" --id incr1
measure r_incr restic backup "$SRC" "${RS[@]}"
D_INCR=$(repo_bytes "$WORK/drmesh-repo"); R_INCR=$(repo_bytes "$RESTIC_REPOSITORY")

measure d_restore "$DRMESH" repo restore incr1 --target "$WORK/restore-drmesh" "${DR[@]}"
measure r_restore restic restore latest --target "$WORK/restore-restic" "${RS[@]}" -q
same() { diff -r -q "$SRC" "$1" >/dev/null && echo OK || echo MISMATCH; }
D_OK=$(same "$WORK/restore-drmesh"); R_OK=$(same "$WORK/restore-restic$SRC")
rm -rf "$WORK/restore-drmesh" "$WORK/restore-restic"

measure d_verify "$DRMESH" repo verify incr1 --read-data "${DR[@]}"
measure r_verify restic check --read-data "${RS[@]}" -q

# cell NAME [BYTES]: "12.3 s, 20.1 CPU-s (95 MiB/s)"
cell() {
  echo -n "${T[$1]} s, ${C[$1]} CPU-s"
  [ -z "${2:-}" ] || awk -v b="$2" -v t="${T[$1]}" 'BEGIN {printf " (%.0f MiB/s)", b / 1048576 / (t > 0 ? t : 0.01)}'
}
echo
echo "drmesh: $("$DRMESH" --version) (git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- agent cli || echo '+dirty')); $(restic version | cut -d' ' -f1-2) (repository v2, --compression auto)"
echo "machine: $(nproc) cores, $(free -m | awk '/Mem:/ {printf "%.0f", $2 / 1024}') GiB, $CACHE page cache before each phase, at most $NOISE cores of other CPU use (other processes, kernel writeback) during a phase"
echo "data set: $FILES files, $(mib "$FULL_BYTES") MiB: $DATASET"
echo "incremental: $MUTATION"
echo "  drmesh says: $(cut -d' ' -f3- "$WORK/d_incr.out")"
echo "  restic says: $(grep -h -E '^(Files|Added to the repository)' "$WORK/r_incr.out" | tr -s ' ' | paste -sd';')"
echo
echo "| phase | drmesh time | restic time | drmesh peak RSS | restic peak RSS | drmesh repo | restic repo |"
echo "|---|---:|---:|---:|---:|---:|---:|"
echo "| full backup ($(mib "$FULL_BYTES") MiB) | $(cell d_full "$FULL_BYTES") | $(cell r_full "$FULL_BYTES") | ${R[d_full]} MiB | ${R[r_full]} MiB | $(mib "$D_FULL") MiB | $(mib "$R_FULL") MiB |"
echo "| incremental (~1% changed) | $(cell d_incr) | $(cell r_incr) | ${R[d_incr]} MiB | ${R[r_incr]} MiB | +$(mib $((D_INCR - D_FULL))) MiB | +$(mib $((R_INCR - R_FULL))) MiB |"
echo "| restore latest ($(mib "$INCR_BYTES") MiB) | $(cell d_restore "$INCR_BYTES"), $D_OK | $(cell r_restore "$INCR_BYTES"), $R_OK | ${R[d_restore]} MiB | ${R[r_restore]} MiB | | |"
echo "| verify, read all data | $(cell d_verify) | $(cell r_verify) | ${R[d_verify]} MiB | ${R[r_verify]} MiB | | |"
[ "$D_OK$R_OK" = OKOK ] || { echo "restored tree differs from the source" >&2; exit 1; }
