#!/usr/bin/env bash
# The whole benchmark report in one command (`make bench`): the data-path,
# cross-node, load-job and master benchmarks and Weir next to JuiceFS, every figure
# beside a baseline measured in the same run. Writes bench/report/
# (report.md, reads.png, metadata.png, results.jsonl) and warns about every
# ratio that fell against the results recorded there before. Needs root.
#
#   bench/suite.sh [OUT=bench/report]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/report}
started=$(date +%s)
VENV=$HOME/.cache/weir/venv
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import matplotlib' 2> /dev/null || "$VENV/bin/pip" install -q 'matplotlib==3.11.*'
RESULTS=$(mktemp)
export RESULTS
trap 'rm -f "$RESULTS"' EXIT

SIZE=2GiB S3_SIZE=1GiB TRIALS=3 bench/data.sh
SIZE=1GiB ROUNDS=7 bench/nodes.sh
SIZE_MIB=2048 TRIALS=2 bench/load.sh
CLIENTS=1,4,16,64 bench/master.sh 3
bench/fs.sh

mkdir -p "$OUT"
minutes=$(awk -v s="$started" -v e="$(date +%s)" 'BEGIN { printf "%.1f", (e - s) / 60 }')
"$VENV/bin/python" bench/report.py "$RESULTS" "$OUT" --previous "$OUT/results.jsonl" --minutes "$minutes"
cp "$RESULTS" "$OUT/results.jsonl"
echo
echo "report: $OUT/report.md ($minutes minutes)"
