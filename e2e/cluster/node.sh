#!/usr/bin/env bash
# Adds or removes a node of the test-bed cluster beyond the first (which is
# this machine). Node N is what kind makes with a container, made here
# without a container engine:
#  - a network namespace with one link on the node bridge (address
#    WEIR_NODE_NET.(10+N)), its own pod bridge and pod range
#    (10.88.(N-1).0/24, routed to it by the host), its own kube-proxy rules;
#  - a mount namespace with its own kubelet root, /var/lib/weir, /dev/shm,
#    /run/containerd, CNI state and pod logs, so a mount made on one node
#    is not seen on another;
#  - its own containerd (the images copied from the first node's), kubelet
#    (pods in the cgroup /weir-node-N) and kube-proxy.
# The control plane, CoreDNS and the first node stay on the host.
#
#   node.sh add N      start node N and wait until it is Ready
#   node.sh remove N   stop it and remove every trace of it
set -euo pipefail
source "$(dirname "$0")/lib.sh"

action=${1:-} n=${2:-}
[[ "$action" =~ ^(add|remove)$ && "$n" =~ ^[0-9]+$ && "$n" -ge 2 && "$n" -le 200 ]] ||
  die "usage: node.sh add|remove N (N from 2)"

name=$(node_name "$n")
ip=$(node_ip "$n")
netns=$(node_netns "$n")
dir=$(node_dir "$n")
pod_cidr=$(node_pod_cidr "$n")
pod_gw=${pod_cidr%.*/*}.1
cgroup=weir-node-$n
host_link=wn$n
pki=$WEIR_LAB/pki
sock=$dir/containerd/containerd.sock
procs=(kube-proxy kubelet containerd)
in_node() { nsenter --net="/run/netns/$netns" --mount="$dir/mntns" -- "$@"; }

stop_pid() { # pid
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null
}

# Safe on a node half made or long gone: every step may find nothing.
remove() (
  set +e
  for p in "${procs[@]}"; do
    pid=$(cat "$WEIR_LAB/pids/$name-$p.pid" 2>/dev/null) && stop_pid "$pid"
    rm -f "$WEIR_LAB/pids/$name-$p.pid"
  done
  # The node's containers, whatever happened to their shims.
  for _ in 1 2 3; do
    pids=$(find /sys/fs/cgroup/*/"$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    kill -KILL $pids 2>/dev/null
    sleep 0.2
  done
  pkill -KILL -f "containerd-shim.*-address $sock" 2>/dev/null || true
  # A killed process blocked on a FUSE mount of this node whose daemon is
  # gone stays until its connection ends (lib.sh, abort_fuse_under).
  if [ -e "$dir/mntns" ]; then
    table=$(mktemp)
    nsenter --mount="$dir/mntns" cat /proc/self/mountinfo > "$table" 2>/dev/null
    for under in "$WEIR_KUBELET_DIR" /var/lib/weir; do abort_fuse_under "$under" "$table"; done
    rm -f "$table"
    for _ in $(seq 20); do
      pids=$(find /sys/fs/cgroup/*/"$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
      [ -z "$pids" ] && break
      kill -KILL $pids 2>/dev/null
      sleep 0.1
    done
  fi
  for sub in /sys/fs/cgroup/*/; do
    [ -d "$sub$cgroup" ] && find "$sub$cgroup" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  [ -f "$KUBECONFIG_ADMIN" ] &&
    kubectl --kubeconfig "$KUBECONFIG_ADMIN" delete node "$name" --ignore-not-found --wait=false >/dev/null 2>&1
  # The mount namespace ends with its last process and its file's mount.
  umount "$dir/mntns" 2>/dev/null || umount -l "$dir/mntns" 2>/dev/null || true
  ip netns delete "$netns" 2>/dev/null || true
  ip link delete "$host_link" 2>/dev/null || true
  ip route delete "$pod_cidr" 2>/dev/null
  rm -rf "$dir"
  return 0
)

if [ "$action" = remove ]; then
  remove
  exit 0
fi

[ -f "$KUBECONFIG_ADMIN" ] || die "no cluster: run up.sh first"
ip link show "$WEIR_NODE_BRIDGE" >/dev/null 2>&1 || die "no node bridge $WEIR_NODE_BRIDGE: run up.sh first"
remove
trap 'rc=$?; [ $rc = 0 ] || { log "adding node $n failed; its logs: $WEIR_LAB/logs/$name-*.log"; remove; }' EXIT
mkdir -p "$dir"/{kubelet,weir,pod-logs,cni/net.d,cni/networks,cni-lib,containerd,kubelet-pki}

# --- network: a link on the node bridge, a pod bridge, routes -----------------
ip netns add "$netns"
ip link add "$host_link" type veth peer name eth0 netns "$netns"
ip link set "$host_link" master "$WEIR_NODE_BRIDGE" up
ip -n "$netns" link set lo up
ip -n "$netns" addr add "$ip/24" dev eth0
ip -n "$netns" link set eth0 up
ip -n "$netns" route add default via "$WEIR_NODE_NET.1"
ip route replace "$pod_cidr" via "$ip" dev "$WEIR_NODE_BRIDGE"
ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$netns" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

# --- cgroups: the node's pods under their own root ---------------------------
for sub in /sys/fs/cgroup/*/; do
  [ -d "$sub" ] && [ ! -L "${sub%/}" ] || continue
  mkdir -p "$sub$cgroup"
  # A cpuset cgroup holds no task until it has CPUs and memory nodes.
  if [ -f "${sub}cpuset.cpus" ]; then
    cat "${sub}cpuset.cpus" > "$sub$cgroup/cpuset.cpus"
    cat "${sub}cpuset.mems" > "$sub$cgroup/cpuset.mems"
  fi
done

# --- mount namespace: the node's own directories -------------------------------
# Private: nothing mounted in the node reaches the host or another node, and
# copies of the host's mounts under the node's directories are let go.
touch "$dir/mntns"
unshare --mount="$dir/mntns" --propagation private true
in_node sh -euc '
  dir=$1 kubelet=$2
  for m in "$kubelet" /var/lib/weir /var/lib/cni /var/log/pods /run/containerd /dev/shm; do
    mkdir -p "$m"
    while mountpoint -q "$m"; do umount -l "$m"; done
  done
  mount --bind "$dir/kubelet" "$kubelet"
  mount --bind "$dir/weir" /var/lib/weir
  mount --bind "$dir/cni-lib" /var/lib/cni
  mount --bind "$dir/pod-logs" /var/log/pods
  mount -t tmpfs -o mode=0711 tmpfs /run/containerd
  mount -t tmpfs -o mode=1777 tmpfs /dev/shm
  # CSI and FUSE mounts made in pods reach the kubelet and other pods.
  mount --make-rshared "$kubelet"
  mount --make-rshared /var/lib/weir
' sh "$dir" "$WEIR_KUBELET_DIR"

# --- identities: client certificates the apiserver's CA signed -----------------
client_cert() { # file CN O
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2/O=$3" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
    -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
client_cert "$dir/kubelet-client" "system:node:$name" system:nodes
client_cert "$dir/kube-proxy-client" system:kube-proxy system:node-proxiers
kubeconfig() { # file cert
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weir-lab
  cluster: {server: "https://${WEIR_POD_CIDR%.*/*}.1:6443", certificate-authority: "$pki/ca.crt"}
users:
- name: node
  user: {client-certificate: "$2.crt", client-key: "$2.key"}
contexts:
- name: weir-lab
  context: {cluster: weir-lab, user: node}
current-context: weir-lab
EOF
  chmod 600 "$1"
}
kubeconfig "$dir/kubelet.kubeconfig" "$dir/kubelet-client"
kubeconfig "$dir/kube-proxy.kubeconfig" "$dir/kube-proxy-client"

# --- containerd, with the first node's images ------------------------------------
write_cni_conf "$dir/cni/net.d/10-weir.conflist" weir0 "$pod_cidr" "$pod_gw" "$dir/cni/networks"
sed -e "s#$WEIR_LAB/containerd/#$dir/containerd/#g" -e "s#$WEIR_LAB/cni/#$dir/cni/#g" \
  "$WEIR_LAB/containerd/config.toml" > "$dir/containerd/config.toml"
IN_NODE=$n start "$name-containerd" containerd --config "$dir/containerd/config.toml"
wait_for "containerd of $name" 20 ctr --address "$sock" version
for ref in $(ctr --address "$WEIR_LAB/containerd/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:'); do
  ctr --address "$WEIR_LAB/containerd/containerd.sock" -n k8s.io images export - "$ref" |
    ctr --address "$sock" -n k8s.io images import - >/dev/null
done

# --- kubelet and kube-proxy ----------------------------------------------------------
sed -e "s#^address: .*#address: \"$ip\"#" \
  -e "s#^tlsCertFile: .*##" -e "s#^tlsPrivateKeyFile: .*##" \
  -e "s#^containerRuntimeEndpoint: .*#containerRuntimeEndpoint: \"unix://$sock\"#" \
  "$WEIR_LAB/kubelet.yaml" > "$dir/kubelet.yaml"
cat >> "$dir/kubelet.yaml" <<EOF
cgroupRoot: /$cgroup
EOF
IN_NODE=$n start "$name-kubelet" kubelet --config="$dir/kubelet.yaml" \
  --kubeconfig="$dir/kubelet.kubeconfig" --hostname-override="$name" --node-ip="$ip" \
  --root-dir="$WEIR_KUBELET_DIR" --cert-dir="$dir/kubelet-pki" ${WEIR_NODE_LABELS:+--node-labels="$WEIR_NODE_LABELS"} \
  ${WEIR_NODE_TAINTS:+--register-with-taints="$WEIR_NODE_TAINTS"}
sed -e "s#^clientConnection: .*#clientConnection: {kubeconfig: \"$dir/kube-proxy.kubeconfig\"}#" \
  -e "s#^hostnameOverride: .*#hostnameOverride: \"$name\"#" \
  "$WEIR_LAB/kube-proxy.yaml" > "$dir/kube-proxy.yaml"
IN_NODE=$n start "$name-kube-proxy" kube-proxy --config="$dir/kube-proxy.yaml"

# WEIR_NODE_WAIT=0: started, not waited for (up.sh starts every node,
# then waits for them together).
if [ "${WEIR_NODE_WAIT:-1}" = 1 ]; then
  wait_for "node $name" 90 node_ready "$name"
  for p in "${procs[@]}"; do alive "$name-$p"; done
fi
log "node $name started at $ip (pods $pod_cidr)"
