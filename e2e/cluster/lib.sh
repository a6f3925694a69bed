# Shared settings of the test-bed scripts; sourced, never run.
# Everything the bed installs lives under WEIR_CACHE (kept between runs);
# everything a running cluster creates lives under WEIR_LAB (removed by down).

WEIR_CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WEIR_REPO_DIR=$(cd "$WEIR_CLUSTER_DIR/../.." && pwd)
WEIR_CACHE=${WEIR_CACHE:-$HOME/.cache/weir}
WEIR_BIN=$WEIR_CACHE/bin
WEIR_LAB=${WEIR_LAB:-/var/lib/weir-lab}
WEIR_NODE=${WEIR_NODE:-weir-node}
WEIR_POD_CIDR=${WEIR_POD_CIDR:-10.88.0.0/16}
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
