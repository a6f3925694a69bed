# Helpers the benchmark scripts share; sourced, not run. Builds the release
# binary once and sets WEIR to it.
#
# Each script prints markdown; with RESULTS=FILE set it also appends one
# JSON object per measurement to FILE, which bench/report.py turns into the
# report and compares with the last recorded results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
cargo build -q --release -p weir-dataplane --bin weir
WEIR=$CARGO_TARGET_DIR/release/weir
S3S=$HOME/.cache/weir/s3s/bin/s3s-fs

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# s3s-fs, not moto, for throughput: moto reads a whole object for every
# ranged GET, which would bill its cost to Weir's per-block GETs.
ensure_s3s() {
  [ -x "$S3S" ] && return
  CARGO_TARGET_DIR=$HOME/.cache/weir/s3s-target cargo install -q --root "$HOME/.cache/weir/s3s" \
    s3s-fs --version 0.14.1 --features binary --locked
}

# Seconds for "$@", best of TRIALS; PRE runs before each trial, untimed.
best() {
  local best="" s e t
  for _ in $(seq "$TRIALS"); do
    ${PRE:-true}
    s=$(now); "$@" > /dev/null; e=$(now)
    t=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.4f", e - s }')
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
  done
  echo "$best"
}

# row BENCH MEASUREMENT WEIR BASELINE-NAME BASELINE [UNIT]: one markdown row
# with the ratio WEIR / BASELINE, and its JSON record.
row() {
  local unit=${6:-MiB/s}
  echo "| $2 | $(printf %.0f "$3") | $4 | $(printf %.0f "$5") | $(ratio "$3" "$5") |"
  [ -n "${RESULTS:-}" ] || return 0
  python3 - "$1" "$2" "$3" "$4" "$5" "$unit" >> "$RESULTS" <<'PY'
import json, sys
bench, name, weir, base_name, base, unit = sys.argv[1:7]
print(json.dumps({"bench": bench, "measurement": name, "weir": float(weir), "baselineName": base_name,
                  "baseline": float(base), "ratio": float(weir) / float(base), "unit": unit}))
PY
}

# One master on a free port (of MASTER_HOST, loopback by default), its
# files under $work; sets MASTERS.
start_master() {
  MASTERS=${MASTER_HOST:-127.0.0.1}:$(free_port)
  RUST_LOG=warn "$WEIR" master --id 1 --peers "1=$MASTERS" --listen "$MASTERS" --data-dir "$work/master" \
    > "$work/master.log" 2>&1 &
  pids+=($!)
}

# start_worker NAME TIER-DIR QUOTA: a worker with one MEM tier.
start_worker() {
  RUST_LOG=warn "$WEIR" worker --masters "$MASTERS" --host 127.0.0.1 --data-listen "127.0.0.1:$(free_port)" \
    --http-listen "127.0.0.1:$(free_port)" --tier "MEM:$2:$3" --state-dir "$work/$1" > "$work/$1.log" 2>&1 &
  pids+=($!)
}

# wait_mounted DIR LOG: until DIR is a mount point, or fail showing LOG.
wait_mounted() {
  for _ in $(seq 100); do mountpoint -q "$1" && return; sleep 0.2; done
  cat "$2"
  return 1
}
