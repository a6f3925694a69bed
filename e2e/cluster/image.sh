#!/usr/bin/env bash
# Builds a container image as a docker-archive tar and imports it into the
# containerd of every node of the test bed (no registry is reachable, pods use
# imagePullPolicy: Never). Unchanged content is not imported again.
#
#   image.sh pause|weir|e2e NAME:TAG     build and import
#   image.sh weir NAME:TAG --tar FILE    build the tar only
set -euo pipefail
source "$(dirname "$0")/lib.sh"

kind=$1 ref=$2
tar_out=
[ "${3:-}" = --tar ] && tar_out=$4
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
PROFILE_DIR=${WEIR_PROFILE_DIR:-$CARGO_TARGET_DIR/${WEIR_PROFILE:-debug}}
# The binaries of the one Weir image (one image holds all three binaries).
WEIR_BINARIES=(weir weir-operator weir-csi)
E2E_BINARIES=(weir-e2e-fuse-probe)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,usr/local/bin,proc,sys,dev,run,var/tmp}
chmod 1777 "$root/tmp" "$root/var/tmp"

add_busybox() {
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
}

# A dynamically linked binary brings the libraries ldd names, at the same
# paths, so the image runs what was tested.
add_binary() {
  local src=$1
  [ -x "$src" ] || die "$src missing: build the workspace first (cargo test --workspace --no-run)"
  install -m 0755 "$src" "$root/usr/local/bin/$(basename "$src")"
  # Debug info is most of a debug build's size; symbols stay for backtraces.
  strip --strip-debug "$root/usr/local/bin/$(basename "$src")"
  # A static binary has no libraries (and ldd fails on it).
  { ldd "$src" 2>/dev/null || true; } | { grep -oE '/[^ ]+\.so[^ ]*' || true; } | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

case $kind in
  pause)
    install -m 0755 "$WEIR_BIN/pause" "$root/pause"
    entrypoint='["/pause"]'
    ;;
  weir)
    add_busybox
    # HTTPS under-storage (and the TLS client's start-up) need the CA roots.
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    for b in "${WEIR_BINARIES[@]}"; do add_binary "$PROFILE_DIR/$b"; done
    # Registers the CSI plugin with the kubelet (built by install.sh).
    add_binary "$WEIR_BIN/weir-csi-registrar"
    entrypoint='["/usr/local/bin/weir"]'
    ;;
  e2e)
    add_busybox
    for b in "${E2E_BINARIES[@]}"; do add_binary "$PROFILE_DIR/$b"; done
    entrypoint='["/bin/sh"]'
    ;;
  *) die "unknown image kind $kind (pause, weir, e2e)" ;;
esac

# Fixed owners and times: the same inputs give the same layer digest, which
# is what lets an unchanged image skip the import.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
stamp_dir=$WEIR_CACHE/images
mkdir -p "$stamp_dir"
stamp=$stamp_dir/$(echo "$ref" | tr '/:' '__')
# Every node's containerd: the first node's and those of nodes 2..N.
sockets=("$WEIR_LAB/containerd/containerd.sock")
for d in "$WEIR_LAB"/nodes/*/; do
  [ -S "${d}containerd/containerd.sock" ] && sockets+=("${d}containerd/containerd.sock")
done
has_ref() { ctr --address "$1" -n k8s.io images ls -q 2>/dev/null | grep -qx "$ref"; }
if [ -z "$tar_out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$layer_sha" ]; then
  missing=0
  for s in "${sockets[@]}"; do has_ref "$s" || missing=1; done
  [ $missing = 0 ] && exit 0
fi

cat > "$work/config.json" <<EOF
{"architecture":"amd64","os":"linux",
 "config":{"Env":["PATH=/usr/local/bin:/bin"],"Entrypoint":$entrypoint,"WorkingDir":"/"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]}}
EOF
config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mkdir -p "$work/archive"
mv "$work/config.json" "$work/archive/$config_sha.json"
mv "$work/layer.tar" "$work/archive/$layer_sha.tar"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s.tar"]}]\n' "$config_sha" "$ref" "$layer_sha" \
  > "$work/archive/manifest.json"
tar -C "$work/archive" -cf "$work/image.tar" .

if [ -n "$tar_out" ]; then
  mv "$work/image.tar" "$tar_out"
  log "wrote $ref to $tar_out"
  exit 0
fi
for s in "${sockets[@]}"; do
  ctr --address "$s" -n k8s.io images import "$work/image.tar" >/dev/null
done
echo "$layer_sha" > "$stamp"
log "imported $ref ($(du -h "$work/image.tar" | cut -f1))"
