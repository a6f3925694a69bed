#!/usr/bin/env bash
# Stops the test-bed cluster and removes every trace of it: processes (by PID
# file, then the containers by cgroup), mounts, network namespaces, the
# bridge, iptables rules, containerd and CNI state, kubelet directories.
# Safe to run twice and after a crash.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

BRIDGE=weir0

stop_pid() { # name pid
  local pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$1 ($pid) ignored SIGTERM; killing"
  kill -KILL "$pid" 2>/dev/null
}

# The nodes beyond the first, each with its own namespaces and processes.
for d in "$WEIR_LAB"/nodes/*/; do
  [ -d "$d" ] && "$WEIR_CLUSTER_DIR/node.sh" remove "$(basename "$d")"
done
for ns in /run/netns/weir-node-*; do
  [ -e "$ns" ] && "$WEIR_CLUSTER_DIR/node.sh" remove "${ns##*-}"
done

# Pods first, while the kubelet could still be asked; but a dead or wedged
# kubelet must not stall teardown, so containers are killed by cgroup below.
for c in coredns kube-proxy kubelet kube-scheduler kube-controller-manager; do
  pid=$(cat "$WEIR_LAB/pids/$c.pid" 2>/dev/null) && stop_pid "$c" "$pid"
done

# Every container process lives in a kubepods cgroup, whatever happened to
# its shim; kill them all, then the shims of our containerd.
kill_cgroup_tree() {
  local root=$1
  [ -d "$root" ] || return 0
  for _ in 1 2 3; do
    pids=$(find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    kill -KILL $pids 2>/dev/null
    sleep 0.2
  done
  find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null
}
for sub in /sys/fs/cgroup/*/; do
  kill_cgroup_tree "${sub}kubepods"
done
pkill -KILL -f "containerd-shim.*-address $WEIR_LAB/containerd" 2>/dev/null
for c in containerd kube-apiserver etcd; do
  pid=$(cat "$WEIR_LAB/pids/$c.pid" 2>/dev/null) && stop_pid "$c" "$pid"
done
# Processes started by an earlier up whose PID files were lost.
pkill -KILL -f "^$WEIR_BIN/(kube-|kubelet|coredns)" 2>/dev/null
pkill -KILL -f "etcd --name weir-lab " 2>/dev/null
pkill -KILL -f "containerd --config $WEIR_LAB/" 2>/dev/null

# Umount (which stats its target first) would wait forever on a FUSE mount
# nobody answers (lib.sh, abort_fuse_under).
abort_fuse_under "$WEIR_KUBELET_DIR"
abort_fuse_under /var/lib/weir

# Mounts: deepest first, lazily if still busy.
unmount_under() {
  local dir=$1
  findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d) == 1' | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
}
unmount_under "$WEIR_KUBELET_DIR"
unmount_under /var/lib/weir
unmount_under "$WEIR_LAB"
unmount_under /run/containerd
unmount_under /run/netns/cni-

# Network: namespaces the CNI made, the bridge, our iptables chains and the
# rules kube-proxy wrote.
for ns in /run/netns/cni-*; do
  [ -e "$ns" ] || continue
  ip netns delete "$(basename "$ns")" 2>/dev/null || rm -f "$ns"
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
ip link show "$WEIR_NODE_BRIDGE" >/dev/null 2>&1 && ip link delete "$WEIR_NODE_BRIDGE"
for pair in INPUT:WEIR-FENCE FORWARD:WEIR-EGRESS; do
  chain=${pair#*:}
  while iptables -D "${pair%%:*}" -j "$chain" 2>/dev/null; do :; done
  iptables -F "$chain" 2>/dev/null && iptables -X "$chain" 2>/dev/null
done
[ -x "$WEIR_BIN/kube-proxy" ] && "$WEIR_BIN/kube-proxy" --cleanup >/dev/null 2>&1

rm -rf "$WEIR_LAB" "$WEIR_KUBELET_DIR" /var/lib/weir /run/containerd /var/lib/cni \
  /var/log/pods /var/log/containers /var/lib/kubelet/device-plugins
exit 0
