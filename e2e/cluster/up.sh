#!/usr/bin/env bash
# Brings up a Kubernetes on this machine: etcd, kube-apiserver (RBAC + Node
# authorization), controller-manager, scheduler, containerd, kubelet,
# kube-proxy (iptables) and CoreDNS, with pods on a CNI bridge. The first
# node is this machine; with NODES=N, nodes 2..N are added in namespaces of
# their own (`node.sh`).
#
# A second `up` while the cluster is healthy does nothing. A port already in
# use makes `up` fail before it starts anything. A failure half way tears
# down what was started, so no half cluster is left behind.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PORTS=(2379 2380 6443 10250 10256 10257 10259 10249)
BRIDGE=weir0
BRIDGE_IP=${WEIR_POD_CIDR%.*/*}.1 # 10.88.0.1
CONTAINERD_SOCK=$WEIR_LAB/containerd/containerd.sock

healthy() {
  [ -f "$KUBECONFIG_ADMIN" ] || return 1
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns; do
    pid=$(cat "$WEIR_LAB/pids/$c.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
  done
  kubectl --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz >/dev/null 2>&1
}

NODES=${NODES:-1}
if healthy; then
  for n in $(seq 2 "$NODES"); do
    node_ready "$(node_name "$n")" || "$WEIR_CLUSTER_DIR/node.sh" add "$n"
  done
  log "cluster already up (kubeconfig $KUBECONFIG_ADMIN)"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "the test bed needs root (mounts, network namespaces, cgroups)"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns pause; do
  [ -x "$WEIR_BIN/$b" ] || die "$WEIR_BIN/$b missing: run e2e/cluster/install.sh first"
done

# Leftovers of a crashed run are cleaned before the port check, so that only
# a foreign process can hold a port.
if [ -d "$WEIR_LAB" ]; then
  log "cleaning up a previous, unhealthy cluster"
  "$WEIR_CLUSTER_DIR/down.sh"
fi

port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
for p in "${PORTS[@]}"; do
  if port_busy "$p"; then
    holder=$(ss -Hltnp "sport = :$p" | sed -n 's/.*users:((\("[^"]*"\).*/\1/p' | head -1)
    die "port $p is already in use${holder:+ by $holder}; free it or stop that process, then run up again"
  fi
done
if ss -Hlun "sport = :53" | grep -qE "(0\.0\.0\.0|\*|$BRIDGE_IP):53"; then
  die "port 53 (udp) on $BRIDGE_IP is already in use; CoreDNS needs it"
fi

STARTED=0
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ $STARTED = 1 ]; then
    log "up failed; logs are in $WEIR_LAB/logs; tearing down what was started"
    mkdir -p /tmp/weir-lab-failed-logs && cp -r "$WEIR_LAB/logs/." /tmp/weir-lab-failed-logs/ 2>/dev/null || true
    "$WEIR_CLUSTER_DIR/down.sh" || true
  fi
}
trap on_exit EXIT

mkdir -p "$WEIR_LAB"/{pids,logs,pki,etcd,containerd,cni/net.d,cni/networks,kubelet-pki}
STARTED=1

grep -qE "^127\.0\.0\.1\s+.*\b$WEIR_NODE\b" /etc/hosts || echo "127.0.0.1 $WEIR_NODE" >> /etc/hosts

# --- certificates and credentials -------------------------------------------
pki=$WEIR_LAB/pki
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=weir-lab-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
sign() { # name CN O SANs
  local name=$1 cn=$2 org=$3 san=${4:-}
  ossl req -newkey rsa:2048 -nodes -subj "/CN=$cn${org:+/O=$org}" -keyout "$pki/$name.key" -out "$pki/$name.csr"
  local ext
  ext=$(mktemp)
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"; [ -n "$san" ] && echo "subjectAltName=$san"; } > "$ext"
  ossl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$pki/$name.crt"
  rm -f "$ext" "$pki/$name.csr"
}
sign apiserver kube-apiserver "" "IP:127.0.0.1,IP:$BRIDGE_IP,IP:${WEIR_SERVICE_CIDR%.*/*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
sign apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
sign kubelet "$WEIR_NODE" "" "IP:127.0.0.1,IP:$BRIDGE_IP,DNS:$WEIR_NODE,DNS:localhost"
ossl genrsa -out "$pki/sa.key" 2048
ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# Static tokens: one identity per component, as a real cluster has.
declare -A TOKENS
tokens_csv=$pki/tokens.csv
: > "$tokens_csv"
add_token() { # id user groups
  local t
  t=$(openssl rand -hex 16)
  TOKENS[$1]=$t
  echo "$t,$2,$2,\"$3\"" >> "$tokens_csv"
}
add_token admin weir-admin system:masters
add_token controller-manager system:kube-controller-manager ""
add_token scheduler system:kube-scheduler ""
add_token kubelet "system:node:$WEIR_NODE" system:nodes
add_token kube-proxy system:kube-proxy ""
add_token coredns weir:coredns ""
kubeconfig() { # id file
  cat > "$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weir-lab
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {token: "${TOKENS[$1]}"}
contexts:
- name: weir-lab
  context: {cluster: weir-lab, user: $1}
current-context: weir-lab
EOF
  chmod 600 "$2"
}
for id in admin controller-manager scheduler kubelet kube-proxy coredns; do
  kubeconfig "$id" "$WEIR_LAB/$id.kubeconfig"
done

# --- host networking: the pod bridge, forwarding, and a fence ----------------
# The bridge exists before the apiserver so that it can advertise an address
# pods can reach; the fence keeps cluster ports off every other interface.
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1
ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
ip addr replace "$BRIDGE_IP/${WEIR_POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# The node bridge: the other nodes' links, and the host on it as the
# router between nodes (each node's pod range is routed to its address).
ip link show "$WEIR_NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$WEIR_NODE_BRIDGE" type bridge
ip addr replace "$WEIR_NODE_NET.1/24" dev "$WEIR_NODE_BRIDGE"
ip link set "$WEIR_NODE_BRIDGE" up
iptables -N WEIR-FENCE 2>/dev/null || iptables -F WEIR-FENCE
iptables -A WEIR-FENCE -i lo -j RETURN
iptables -A WEIR-FENCE -i "$BRIDGE" -j RETURN
iptables -A WEIR-FENCE -i "$WEIR_NODE_BRIDGE" -j RETURN
iptables -A WEIR-FENCE -p tcp -m multiport --dports 2379,2380,6443,10250 -j DROP
iptables -A WEIR-FENCE -p udp --dport 53 -j DROP
iptables -C INPUT -j WEIR-FENCE 2>/dev/null || iptables -I INPUT -j WEIR-FENCE
# Pod traffic stays on the bridge and loopback: nothing is forwarded out of
# any other interface.
iptables -N WEIR-EGRESS 2>/dev/null || iptables -F WEIR-EGRESS
for from in "$BRIDGE" "$WEIR_NODE_BRIDGE"; do
  for to in "$BRIDGE" "$WEIR_NODE_BRIDGE"; do
    iptables -A WEIR-EGRESS -i "$from" -o "$to" -j RETURN
  done
  iptables -A WEIR-EGRESS -i "$from" -j DROP
done
iptables -C FORWARD -j WEIR-EGRESS 2>/dev/null || iptables -I FORWARD -j WEIR-EGRESS

# --- control plane -----------------------------------------------------------
start etcd etcd --name weir-lab --data-dir "$WEIR_LAB/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster weir-lab=http://127.0.0.1:2380 --log-level warn
wait_for etcd 20 curl -fsS http://127.0.0.1:2379/health

start kube-apiserver kube-apiserver \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$BRIDGE_IP" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --requestheader-client-ca-file="$pki/ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --token-auth-file="$tokens_csv" \
  --authorization-mode=Node,RBAC --allow-privileged=true \
  --enable-admission-plugins=NodeRestriction \
  --service-cluster-ip-range="$WEIR_SERVICE_CIDR" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --profiling=false
wait_for kube-apiserver 60 kubectl --kubeconfig "$KUBECONFIG_ADMIN" get --raw /readyz
k() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

start kube-controller-manager kube-controller-manager \
  --kubeconfig="$WEIR_LAB/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$WEIR_LAB/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$WEIR_LAB/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --allocate-node-cidrs=false --controllers='*,-cloud-node-lifecycle'
start kube-scheduler kube-scheduler \
  --kubeconfig="$WEIR_LAB/scheduler.kubeconfig" \
  --authentication-kubeconfig="$WEIR_LAB/scheduler.kubeconfig" \
  --authorization-kubeconfig="$WEIR_LAB/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false

# CoreDNS and kube-proxy read Services and endpoints; CoreDNS gets only that.
k apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "weir:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "weir:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "weir:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "weir:coredns"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "weir:kube-proxy"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-proxier"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-proxy"}]
EOF

# --- node: containerd, CNI, kubelet, kube-proxy, CoreDNS -----------------------
write_cni_conf "$WEIR_LAB/cni/net.d/10-weir.conflist" "$BRIDGE" "$WEIR_POD_CIDR" "$BRIDGE_IP" "$WEIR_LAB/cni/networks"
cat > "$WEIR_LAB/containerd/config.toml" <<EOF
version = 2
root = "$WEIR_LAB/containerd/root"
state = "$WEIR_LAB/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$WEIR_PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WEIR_LAB/cni/net.d"
EOF
start containerd containerd --config "$WEIR_LAB/containerd/config.toml"
wait_for containerd 20 ctr --address "$CONTAINERD_SOCK" version
alive containerd

# Images are imported, never pulled: no registry is reachable.
"$WEIR_CLUSTER_DIR/image.sh" pause "$WEIR_PAUSE_IMAGE"
"$WEIR_CLUSTER_DIR/image.sh" weir "$WEIR_IMAGE"
"$WEIR_CLUSTER_DIR/image.sh" e2e weir.io/e2e:dev

# CSI and FUSE mounts made in pods must reach the host and the other pods:
# the kubelet root is a shared mount.
mkdir -p "$WEIR_KUBELET_DIR" /var/lib/weir
for shared in "$WEIR_KUBELET_DIR" /var/lib/weir; do
  if ! findmnt -n -o TARGET "$shared" | grep -qx "$shared"; then
    mount --bind "$shared" "$shared"
  fi
  mount --make-rshared "$shared"
done

cat > "$WEIR_LAB/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The node's address is the bridge's: the kubelet refuses a loopback node IP,
# and pods on the bridge can reach host-network pods there.
address: "$BRIDGE_IP"
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
tlsCertFile: "$pki/kubelet.crt"
tlsPrivateKeyFile: "$pki/kubelet.key"
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
oomScoreAdj: 0
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
clusterDomain: cluster.local
clusterDNS: ["$BRIDGE_IP"]
resolvConf: /dev/null
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
start kubelet kubelet --config="$WEIR_LAB/kubelet.yaml" --kubeconfig="$WEIR_LAB/kubelet.kubeconfig" \
  --hostname-override="$WEIR_NODE" --node-ip="$BRIDGE_IP" --root-dir="$WEIR_KUBELET_DIR" \
  --cert-dir="$WEIR_LAB/kubelet-pki"

cat > "$WEIR_LAB/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$WEIR_LAB/kube-proxy.kubeconfig"}
hostnameOverride: "$WEIR_NODE"
clusterCIDR: "$WEIR_CLUSTER_CIDR"
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}
iptables: {masqueradeAll: false}
EOF
start kube-proxy kube-proxy --config="$WEIR_LAB/kube-proxy.yaml"

cat > "$WEIR_LAB/Corefile" <<EOF
.:53 {
    bind $BRIDGE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $WEIR_LAB/coredns.kubeconfig weir-lab
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
start coredns coredns -conf "$WEIR_LAB/Corefile"

# The other nodes start while this one registers; all are waited for
# together (one after the other, each waiting for Ready, took 10 s a node).
for n in $(seq 2 "$NODES"); do
  WEIR_NODE_WAIT=0 "$WEIR_CLUSTER_DIR/node.sh" add "$n"
done
wait_for "node $WEIR_NODE" 60 sh -c "kubectl --kubeconfig '$KUBECONFIG_ADMIN' get node '$WEIR_NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns; do alive "$c"; done
wait_for "default service account" 30 k get serviceaccount default -n default
for n in $(seq 2 "$NODES"); do
  wait_for "node $(node_name "$n")" 90 node_ready "$(node_name "$n")"
  for p in containerd kubelet kube-proxy; do alive "$(node_name "$n")-$p"; done
done
log "cluster up in ${SECONDS}s ($NODES node(s)): export KUBECONFIG=$KUBECONFIG_ADMIN"
