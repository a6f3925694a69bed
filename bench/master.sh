#!/usr/bin/env bash
# Master metadata benchmark: getStatus and create ops/s with CLIENTS
# concurrent clients against 1 master and against 3 masters, each next to a
# no-op RPC measured in the same run. Prints markdown tables.
#
#   bench/master.sh [seconds-per-measurement] [CLIENTS=16,64]
SECONDS_EACH=${1:-10}
CLIENTS=${CLIENTS:-16,64}
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

run() { # masters
  local n=$1 peers="" addrs=""
  local ports=()
  for i in $(seq "$n"); do ports+=("$(free_port)"); done
  for i in $(seq "$n"); do
    peers+="${peers:+,}$i=127.0.0.1:${ports[$((i-1))]}"
    addrs+="${addrs:+,}127.0.0.1:${ports[$((i-1))]}"
  done
  pids=()
  for i in $(seq "$n"); do
    RUST_LOG=warn "$WEIR" master --id "$i" --peers "$peers" --listen "127.0.0.1:${ports[$((i-1))]}" \
      --data-dir "$work/n$n-m$i" > "$work/n$n-m$i.log" 2>&1 &
    pids+=($!)
  done
  echo
  echo "### $n master(s), $(nproc) cores, $(date -u +%Y-%m-%d)"
  echo
  "$WEIR" bench --masters "$addrs" meta --seconds "$SECONDS_EACH" --clients "$CLIENTS" --json > "$work/meta-$n.jsonl"
  python3 - "$n" "$work/meta-$n.jsonl" "${RESULTS:-}" <<'PY'
import json, sys
n, cells, results = int(sys.argv[1]), [json.loads(l) for l in open(sys.argv[2])], sys.argv[3]
print("| op | transport | clients | ops/s | p50 µs | p99 µs | errors | no-op RPC ops/s (baseline) | ratio |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for c in cells:
    print(f"| {c['op']} | {c['transport']} | {c['clients']} | {c['opsPerSec']:.0f} | {c['p50Us']} | {c['p99Us']} "
          f"| {c['errors']} | {c['baselineOpsPerSec']:.0f} | {c['ratio']:.2f} |")
if results:
    with open(results, "a") as f:
        for c in cells:
            print(json.dumps({"bench": "meta", "measurement": f"{c['op']} ({c['transport']}), {c['clients']} clients, {n} master(s)",
                              "op": c["op"], "transport": c["transport"], "clients": c["clients"], "masters": n,
                              "weir": c["opsPerSec"], "baselineName": "no-op RPC", "baseline": c["baselineOpsPerSec"],
                              "ratio": c["ratio"], "unit": "ops/s", "errors": c["errors"]}), file=f)
PY
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

run 1
run 3
