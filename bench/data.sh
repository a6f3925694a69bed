#!/usr/bin/env bash
# Data-path benchmarks on this machine, each next to a baseline measured in
# the same run, printed as a markdown table with the ratio:
#  1. FUSE sequential read (page cache dropped) of a Weir-cached file of
#     SIZE (64 MiB blocks) vs `cat` of the same bytes from the worker's
#     tmpfs tier;
#  2. the same for a file cached as a single block.
#  Both are read by FUSE passthrough: the worker keeps a file's blocks on a
#  tier in one data file, which the kernel reads itself;
#  3. client read from a remote worker (data port) vs short-circuit, and
#     the same remote read vs the transport's own ceiling: the worker's
#     data file sent over one loopback TCP connection (sendfile -> recv,
#     no Weir code; `weir bench tcp-loopback`), next to the short-circuit
#     read as well, so the table shows how much of the gap is Weir's;
#  4. first (cold) read through Weir from a local S3 server vs one direct
#     ranged GET of the same object. The server is s3s-fs (installed with
#     cargo into ~/.cache/weir/s3s on first use): moto reads a whole object
#     for every ranged GET, which would bill its cost to Weir's per-block
#     GETs (S3_SERVER=moto to see that anyway);
#  5. cached small-file reads through FUSE from a mount checked `Always`
#     (one under-storage stat per check) vs the same files in a mount
#     checked every 60 s: SMALL_FILES files of 64 KiB in two identical
#     local directories, loaded, each read once per round with the page
#     cache dropped and the client's metadata expired; the rounds take
#     turns, the median of ROUNDS; the master's check counter gives the
#     stats per file read.
# Needs root (FUSE, drop_caches).
#
#   bench/data.sh [SIZE=2GiB] [S3_SIZE=1GiB] [TRIALS=3] [SMALL_FILES=500] [ROUNDS=5]
SIZE=${SIZE:-2GiB}
S3_SIZE=${S3_SIZE:-1GiB}
TRIALS=${TRIALS:-3}
SMALL_FILES=${SMALL_FILES:-500}
ROUNDS=${ROUNDS:-5}
source "$(dirname "$0")/lib.sh"
S3_SERVER=${S3_SERVER:-s3s}
MOTO=${WEIR_MOTO_SERVER:-$HOME/.cache/weir/venv/bin/moto_server}
[ "$S3_SERVER" != s3s ] || ensure_s3s
work=$(mktemp -d)
tier=/dev/shm/weir-bench-$$
pids=()
cleanup() {
  umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$tier"
}
trap cleanup EXIT

s3port=$(free_port)
start_master
masters=$MASTERS
if [ "$S3_SERVER" = s3s ]; then
  mkdir -p "$work/s3/bkt"
  "$S3S" --host 127.0.0.1 --port "$s3port" --access-key testing --secret-key testing "$work/s3" > "$work/s3.log" 2>&1 &
else
  "$MOTO" -H 127.0.0.1 -p "$s3port" > "$work/s3.log" 2>&1 &
fi
pids+=($!)
sleep 2
start_worker worker "$tier" 12GiB
mkdir -p "$work/mnt"
RUST_LOG=warn "$WEIR" fuse --masters "$masters" --mount-point "$work/mnt" > "$work/fuse.log" 2>&1 &
pids+=($!)
wait_mounted "$work/mnt" "$work/fuse.log"

# Files written into the cache (MUST_CACHE): SIZE in 64 MiB blocks, and
# the same bytes as one block.
"$WEIR" bench ufs-write --root "local://$work" --path src --bytes "$SIZE" > /dev/null
bytes=$(stat -c %s "$work/src")
"$WEIR" fs --masters "$masters" cp --write-type MUST_CACHE "file:$work/src" /bench/multi 2> /dev/null
"$WEIR" fs --masters "$masters" cp --write-type MUST_CACHE --block-size "$bytes" "file:$work/src" /bench/single 2> /dev/null
rm "$work/src"
data_file() { # path -> the worker's tmpfs data file holding its blocks
  echo "$tier/$("$WEIR" fs --masters "$masters" stat --json "$1" | json_field id).data"
}
multi_file=$(data_file /bench/multi)
single_file=$(data_file /bench/single)

t_tmpfs=$(best cat "$multi_file")
t_fuse=$(PRE=drop_caches best cat "$work/mnt/bench/multi")
t_tmpfs1=$(best cat "$single_file")
t_fuse1=$(PRE=drop_caches best cat "$work/mnt/bench/single")

read_mibs() { "$WEIR" bench --masters "$masters" read "$@" | json_field mib_per_s; }
sc=0; remote=0; tcp=0
for _ in $(seq "$TRIALS"); do
  sc=$(max "$(read_mibs /bench/multi)" "$sc")
  remote=$(max "$(read_mibs /bench/multi --no-short-circuit)" "$remote")
  tcp=$(max "$("$WEIR" bench tcp-loopback "$multi_file" | json_field mib_per_s)" "$tcp")
done

# Cold reads from S3 through Weir vs direct ranged GETs of the same object.
[ "$S3_SERVER" = s3s ] || python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$s3port/bkt', method='PUT'))"
printf testing > "$work/key"
s3opts=(--option "endpoint=http://127.0.0.1:$s3port" --credential-file "accessKeyId=$work/key" --credential-file "secretAccessKey=$work/key")
"$WEIR" bench ufs-write --root s3://bkt --path obj --bytes "$S3_SIZE" "${s3opts[@]}" > /dev/null
"$WEIR" fs --masters "$masters" mount --read-only /s3 s3://bkt "${s3opts[@]}" 2> /dev/null
direct=0; cold=0
for _ in $(seq "$TRIALS"); do
  direct=$(max "$("$WEIR" bench ufs-read --root s3://bkt --path obj "${s3opts[@]}" | json_field mib_per_s)" "$direct")
  cold=$(max "$(read_mibs /s3/obj)" "$cold")
  # Make the next read cold again.
  "$WEIR" fs --masters "$masters" free /s3/obj 2> /dev/null
  for _ in $(seq 50); do
    [ "$("$WEIR" fs --masters "$masters" stat --json /s3/obj | json_field cachedPercent)" = 0 ] && break
    sleep 0.2
  done
done

# Small files, Always vs Interval.
python3 - "$work" "$SMALL_FILES" <<'PY'
import os, sys
work, n = sys.argv[1], int(sys.argv[2])
for d in ("small-interval", "small-always"):
    os.makedirs(f"{work}/{d}")
for i in range(n):
    data = os.urandom(65536)
    for d in ("small-interval", "small-always"):
        with open(f"{work}/{d}/f{i}", "wb") as f:
            f.write(data)
PY
for mode in interval always; do
  sync=$([ "$mode" = always ] && echo always || echo 60s)
  "$WEIR" fs --masters "$masters" mount --read-only --sync "$sync" "/small-$mode" "local://$work/small-$mode" 2> /dev/null
done
"$WEIR" fs --masters "$masters" load --watch /small-interval /small-always > /dev/null 2>&1
checks() { curl -s "http://$masters/metrics" | awk '/^weir_master_ufs_checks_total/ { n += $2 } END { print n + 0 }'; }
read_small() { # DIR -> files read per second, each file opened and read whole
  python3 - "$1" <<'PY'
import os, sys, time
d = sys.argv[1]
names = sorted(os.listdir(d))
start = time.perf_counter()
for n in names:
    with open(os.path.join(d, n), "rb") as f:
        while f.read(1 << 20):
            pass
print(f"{len(names) / (time.perf_counter() - start):.1f}")
PY
}
small_round() { # MODE -> files/s and checks per file of one round
  drop_caches
  sleep 1.2
  local before after rate
  before=$(checks)
  rate=$(read_small "$work/mnt/small-$1")
  after=$(checks)
  echo "$rate $(awk -v a="$after" -v b="$before" -v n="$SMALL_FILES" 'BEGIN { printf "%.2f", (a - b) / n }')"
}
: > "$work/small-interval.txt"; : > "$work/small-always.txt"
read_small "$work/mnt/small-interval" > /dev/null; read_small "$work/mnt/small-always" > /dev/null
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="interval always"; else order="always interval"; fi
  for mode in $order; do small_round "$mode" >> "$work/small-$mode.txt"; done
done
small_interval=$(cut -d' ' -f1 "$work/small-interval.txt" | median)
small_always=$(cut -d' ' -f1 "$work/small-always.txt" | median)
checks_interval=$(cut -d' ' -f2 "$work/small-interval.txt" | median)
checks_always=$(cut -d' ' -f2 "$work/small-always.txt" | median)

echo
echo "### data path, $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%d), best of $TRIALS"
echo
echo "| measurement | Weir MiB/s | baseline | baseline MiB/s | ratio |"
echo "|---|---|---|---|---|"
row data "FUSE sequential read, $SIZE in 64 MiB blocks, page cache dropped" "$(mibs "$bytes" "$t_fuse")" \
  "cat of the worker's tmpfs data file" "$(mibs "$bytes" "$t_tmpfs")"
row data "FUSE sequential read, $SIZE as one block, page cache dropped" "$(mibs "$bytes" "$t_fuse1")" \
  "cat of the worker's tmpfs data file" "$(mibs "$bytes" "$t_tmpfs1")"
row data "client read from the worker's data port (remote)" "$remote" "short-circuit read" "$sc"
row data "client read from the worker's data port (remote)" "$remote" "one loopback TCP connection, sendfile -> recv" "$tcp"
row data "one loopback TCP connection, sendfile -> recv (no Weir code)" "$tcp" "short-circuit read" "$sc"
row data "first (cold) read of $S3_SIZE from S3 ($S3_SERVER) through Weir" "$cold" "one direct ranged GET" "$direct"
echo
echo "| measurement | Weir files/s | baseline | baseline files/s | ratio |"
echo "|---|---|---|---|---|"
row data "FUSE cached 64 KiB file reads, mount checked Always ($checks_always stats per file)" "$small_always" \
  "the same, mount checked every 60 s ($checks_interval stats per file)" "$small_interval" files/s
echo
echo "Small files: median of $ROUNDS rounds of $SMALL_FILES files, page cache dropped and client metadata expired before each."
