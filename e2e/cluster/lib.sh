# Shared settings of the test-bed scripts; sourced, never run.
# Everything the bed installs lives under WEIR_CACHE (kept between runs);
# everything a running cluster creates lives under WEIR_LAB (removed by down).

WEIR_CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WEIR_REPO_DIR=$(cd "$WEIR_CLUSTER_DIR/../.." && pwd)
WEIR_CACHE=${WEIR_CACHE:-$HOME/.cache/weir}
WEIR_BIN=$WEIR_CACHE/bin
WEIR_LAB=${WEIR_LAB:-/var/lib/weir-lab}
WEIR_NODE=${WEIR_NODE:-weir-node}
WEIR_POD_CIDR=${WEIR_POD_CIDR:-10.88.0.0/24} # the first node's pods
WEIR_SERVICE_CIDR=${WEIR_SERVICE_CIDR:-10.96.0.0/24}
WEIR_DNS_IP=${WEIR_DNS_IP:-10.96.0.10}
WEIR_KUBELET_DIR=${WEIR_KUBELET_DIR:-/var/lib/kubelet}
WEIR_IMAGE=${WEIR_IMAGE:-weir.io/weir:dev}
WEIR_PAUSE_IMAGE=weir.io/pause:1
KUBECONFIG_ADMIN=$WEIR_LAB/admin.kubeconfig

export GOCACHE=${GOCACHE:-$HOME/.cache/go-build}
export GOMODCACHE=${GOMODCACHE:-$HOME/.cache/go-mod}
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export CGO_ENABLED=0
export PATH=$WEIR_BIN:$PATH

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Nodes beyond the first (which is this machine itself) each live in a
# network namespace on the node bridge and a mount namespace of their own.
WEIR_NODE_BRIDGE=weirn0
WEIR_NODE_NET=${WEIR_NODE_NET:-10.89.0}   # /24: the host is .1, node N is .(10+N)
WEIR_CLUSTER_CIDR=${WEIR_CLUSTER_CIDR:-10.88.0.0/16} # every node's pods
node_name() { if [ "$1" = 1 ]; then echo "$WEIR_NODE"; else echo "$WEIR_NODE-$1"; fi; }
node_ip() { echo "$WEIR_NODE_NET.$((10 + $1))"; }
node_pod_cidr() { echo "10.88.$(($1 - 1)).0/24"; }
node_dir() { echo "$WEIR_LAB/nodes/$1"; }
node_netns() { echo "weir-node-$1"; }

# start NAME COMMAND ARGS...: a cluster process, started by absolute path
# (so down can find it), its log and PID file under WEIR_LAB. With IN_NODE
# set to a node number above 1 it runs in that node's namespaces.
start() {
  local name=$1 exe enter=()
  exe=$(command -v "$2")
  shift 2
  if [ -n "${IN_NODE:-}" ]; then
    enter=(nsenter --net="/run/netns/$(node_netns "$IN_NODE")" --mount="$(node_dir "$IN_NODE")/mntns" --)
  fi
  setsid "${enter[@]}" "$exe" "$@" > "$WEIR_LAB/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$WEIR_LAB/pids/$name.pid"
}
wait_for() { # what seconds command...
  local what=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after $((deadline - SECONDS + $2))s"
    sleep 0.2
  done
}
alive() { kill -0 "$(cat "$WEIR_LAB/pids/$1.pid")" 2>/dev/null || die "$1 exited: $(tail -5 "$WEIR_LAB/logs/$1.log")"; }
node_ready() { # name
  kubectl --kubeconfig "$KUBECONFIG_ADMIN" get node "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

# write_cni_conf FILE BRIDGE SUBNET GATEWAY IPAM_DIR: a node's pod network,
# a bridge its pods hang off with addresses from SUBNET.
write_cni_conf() {
  cat > "$1" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "weir-pods",
  "plugins": [
    {"type": "bridge", "bridge": "$2", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$3", "gateway": "$4"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$5"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
}

# abort_fuse_under DIR [MOUNTINFO]: ends the connections of the FUSE mounts
# under DIR in a mount table (this namespace's by default). A mount whose
# daemon is gone while something still holds its /dev/fuse descriptor (the
# CSI plugin keeps one for FUSE restarts) answers nothing: a process blocked
# on it, even killed, never exits, and the holder's descriptor is closed
# only when it does.
abort_fuse_under() {
  local dir=$1 table=${2:-/proc/self/mountinfo}
  mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || return 0
  awk -v d="$dir" '{
    for (i = 7; i <= NF; i++) if ($i == "-") { fs = $(i + 1); break }
    if ((fs == "fuse" || fs ~ /^fuse\./) && index($5, d) == 1) { split($3, dev, ":"); print dev[2] }
  }' "$table" | sort -u | while read -r minor; do
    if [ -w "/sys/fs/fuse/connections/$minor/abort" ]; then
      echo 1 > "/sys/fs/fuse/connections/$minor/abort" && log "ended FUSE connection $minor"
    fi
  done
}
