#!/usr/bin/env bash
# Master metadata benchmark: getStatus and create ops/s with 16 and 64
# concurrent clients against 1 master and against 3 masters, each next to a
# no-op RPC measured in the same run. Prints markdown tables.
#
#   bench/master.sh [seconds-per-measurement]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
cargo build -q --release -p weir-dataplane --bin weir
WEIR=$CARGO_TARGET_DIR/release/weir
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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
  "$WEIR" bench --masters "$addrs" meta --seconds "$SECONDS_EACH" --clients 16,64
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

run 1
run 3
