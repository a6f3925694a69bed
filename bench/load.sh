#!/usr/bin/env bash
# Load-job benchmark: a load of a mixed-size dataset from a local S3 server
# into a two-worker cluster, next to the baseline measured in the same run:
# every object of the dataset read with parallel ranged GETs of block size
# (as many in flight as the load job runs block tasks), straight from the
# same server. The server is s3s-fs (installed with cargo into
# ~/.cache/weir/s3s on first use).
#
#   bench/load.sh [SIZE_MIB=2048] [TRIALS=3]
SIZE_MIB=${SIZE_MIB:-2048}
TRIALS=${TRIALS:-3}
source "$(dirname "$0")/lib.sh"
ensure_s3s
work=$(mktemp -d)
tiers=(/dev/shm/weir-load-bench-$$-0 /dev/shm/weir-load-bench-$$-1)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "${tiers[@]}"
}
trap cleanup EXIT

s3port=$(free_port)
start_master
masters=$MASTERS
mkdir -p "$work/s3/bkt"
"$S3S" --host 127.0.0.1 --port "$s3port" --access-key testing --secret-key testing "$work/s3" > "$work/s3.log" 2>&1 &
pids+=($!)
sleep 2
for i in 0 1; do start_worker "worker$i" "${tiers[$i]}" "$((SIZE_MIB * 2))MiB"; done

# Mixed sizes: half the bytes in 256 MiB files, a quarter in 32 MiB files,
# a quarter in 1 MiB files.
printf testing > "$work/key"
s3opts=(--option "endpoint=http://127.0.0.1:$s3port" --credential-file "accessKeyId=$work/key" --credential-file "secretAccessKey=$work/key")
put() { "$WEIR" bench ufs-write --root s3://bkt --path "$1" --bytes "$2" "${s3opts[@]}" > /dev/null; }
n=0
for i in $(seq $((SIZE_MIB / 2 / 256))); do put "data/large/l$i" 256MiB; n=$((n + 1)); done
for i in $(seq $((SIZE_MIB / 4 / 32))); do put "data/medium/m$i" 32MiB; n=$((n + 1)); done
for i in $(seq $((SIZE_MIB / 4))); do put "data/small/s$i" 1MiB; n=$((n + 1)); done
"$WEIR" fs --masters "$masters" mount --read-only /s3 s3://bkt/data "${s3opts[@]}" 2> /dev/null
for _ in $(seq 50); do
  [ "$("$WEIR" admin --masters "$masters" report --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))')" = 2 ] && break
  sleep 0.2
done
# (The dataset is a mount's root: s3s-fs answers a HEAD of a directory
# key with 500, not 404.)
# Tasks in flight for both: the load job's default, 4 per worker.
parallel=8

get=0; load=0
for _ in $(seq "$TRIALS"); do
  v=$("$WEIR" bench ufs-parallel-read --root s3://bkt/data --path / --concurrency "$parallel" "${s3opts[@]}" | json_field mib_per_s)
  get=$(max "$v" "$get")
  v=$("$WEIR" bench --masters "$masters" load /s3 --parallelism "$parallel" | json_field mib_per_s)
  load=$(max "$v" "$load")
  "$WEIR" fs --masters "$masters" free /s3 --watch > /dev/null 2>&1
done

echo
echo "### load job, $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%d), best of $TRIALS"
echo
echo "| measurement | Weir MiB/s | baseline | baseline MiB/s | ratio |"
echo "|---|---|---|---|---|"
row load "load of $SIZE_MIB MiB in $n files (256 MiB / 32 MiB / 1 MiB) from S3 (s3s-fs) into 2 workers" "$load" \
  "parallel ranged GETs ($parallel in flight, 64 MiB) of the same objects" "$get"
