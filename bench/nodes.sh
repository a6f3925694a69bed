#!/usr/bin/env bash
# Reads across two nodes, each next to its ceiling measured in the same
# run, printed as a markdown table with the ratio. The two nodes are
# network namespaces of this machine joined by a bridge (as the e2e test
# bed's nodes are), with a Weir master on the bridge's host address:
#  1. remote read: a client in node B reads a file whose blocks only the
#     worker in node A holds, over the link between them, vs the same
#     bytes (the worker's data file) over one TCP connection from A to B
#     (`weir bench tcp-send` in A, `weir bench tcp-recv` in B: sendfile ->
#     recv as the worker and the client do, no Weir code);
#  2. short-circuit read: a client in node A reads the file from A's
#     worker's data file vs a pread of that file.
# The four measurements take turns for ROUNDS rounds; each row is the
# median. Needs root (namespaces).
#
#   bench/nodes.sh [SIZE=1GiB] [ROUNDS=5]
SIZE=${SIZE:-1GiB}
ROUNDS=${ROUNDS:-5}
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
tier=/dev/shm/weir-bench-nodes-$$
bridge=weirbn0
net=10.92.0
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in a b; do
    ip link delete "wbn$n" 2>/dev/null || true
    ip netns delete "weir-bench-$n" 2>/dev/null || true
  done
  ip link delete "$bridge" 2>/dev/null || true
  rm -rf "$work" "$tier"
}
trap cleanup EXIT

# The nodes: A at .2, B at .3, the host (and the master) at .1.
ip link add "$bridge" type bridge
ip addr add "$net.1/24" dev "$bridge"
ip link set "$bridge" up
i=2
for n in a b; do
  ip netns add "weir-bench-$n"
  ip link add "wbn$n" type veth peer name eth0 netns "weir-bench-$n"
  ip link set "wbn$n" master "$bridge" up
  ip -n "weir-bench-$n" addr add "$net.$i/24" dev eth0
  ip -n "weir-bench-$n" link set eth0 up
  ip -n "weir-bench-$n" link set lo up
  i=$((i + 1))
done
on() { local n=$1; shift; ip netns exec "weir-bench-$n" "$@"; }
node_a=$net.2

MASTER_HOST=$net.1 start_master
masters=$MASTERS
mkdir -p "$tier"
RUST_LOG=warn on a "$WEIR" worker --masters "$masters" --host "$node_a" --data-listen "$node_a:19300" \
  --http-listen "$node_a:19301" --tier "MEM:$tier:12GiB" --state-dir "$work/worker" > "$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$WEIR" admin --masters "$masters" report --json 2> /dev/null | grep -q '"workers":\[{' && break
  sleep 0.2
done

"$WEIR" bench ufs-write --root "local://$work" --path src --bytes "$SIZE" > /dev/null
bytes=$(stat -c %s "$work/src")
on a "$WEIR" fs --masters "$masters" cp --write-type MUST_CACHE "file:$work/src" /bench/f 2> /dev/null
rm "$work/src"
data_file="$tier/$("$WEIR" fs --masters "$masters" stat --json /bench/f | json_field id).data"
[ "$(stat -c %s "$data_file")" = "$bytes" ] || { echo "no data file of $bytes bytes at $data_file" >&2; exit 1; }

read_mibs() { local n=$1; shift; on "$n" "$WEIR" bench --masters "$masters" read /bench/f "$@" | json_field mib_per_s; }
port=19400
for _ in $(seq "$ROUNDS"); do
  read_mibs b >> "$work/remote"
  port=$((port + 1))
  on a "$WEIR" bench tcp-send "$data_file" --listen "$node_a:$port" > /dev/null &
  on b "$WEIR" bench tcp-recv --from "$node_a:$port" --bytes "$bytes" | json_field mib_per_s >> "$work/tcp"
  wait $!
  read_mibs a --client-host "$node_a" >> "$work/short"
  "$WEIR" bench pread "$data_file" | json_field mib_per_s >> "$work/pread"
done
holders=$("$WEIR" fs --masters "$masters" locate /bench/f --json)
echo "$holders" | grep -q "\"host\":\"$node_a\"" || { echo "the file is not held by node A's worker: $holders" >&2; exit 1; }

echo
echo "### Across two nodes ($SIZE, median of $ROUNDS rounds)"
echo
echo "| Weir | MiB/s | baseline | MiB/s | ratio |"
echo "|---|---|---|---|---|"
row nodes "remote read: a client on node B, blocks on node A's worker" "$(median < "$work/remote")" \
  "one TCP connection from node A to node B, sendfile -> recv (no Weir code)" "$(median < "$work/tcp")"
row nodes "short-circuit read on node A" "$(median < "$work/short")" \
  "pread of the worker's data file" "$(median < "$work/pread")"
