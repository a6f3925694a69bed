#!/usr/bin/env bash
# The user journey on this machine (`make demo`): a local Kubernetes, Weir
# installed with Helm, an S3-compatible server holding sample data, the
# examples applied, a pod that reads the data through the dataset's PVC and
# prints checksums (compared with the source), a DataLoad, and the Dataset
# at 100% cached. `e2e/demo.sh down` removes all of it but the cluster.
#
# Settings (environment): WEIR_DEMO_NAMESPACE (weir-demo), WEIR_RELEASE_NAMESPACE
# (weir-system), WEIR_DEMO_S3_PORT (9000), WEIR_DEMO_DIR (/tmp/weir-journey),
# WEIR_WATCH_NAMESPACE (empty: the operator watches every namespace).
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"

NS=${WEIR_DEMO_NAMESPACE:-weir-demo}
RELEASE_NS=${WEIR_RELEASE_NAMESPACE:-weir-system}
S3_IP=${WEIR_POD_CIDR%.*/*}.1 # the pod bridge: pods reach it, nothing else does
S3_PORT=${WEIR_DEMO_S3_PORT:-9000}
S3=http://$S3_IP:$S3_PORT
DIR=${WEIR_DEMO_DIR:-/tmp/weir-journey}
EXAMPLES=$WEIR_REPO_DIR/examples
PYTHON=$WEIR_CACHE/venv/bin/python
export KUBECONFIG=$KUBECONFIG_ADMIN

k() { kubectl "$@"; }
ms() { echo $(($(date +%s%N) / 1000000)); }

stop_s3() {
  if [ -f "$DIR/s3.pid" ]; then
    kill "$(cat "$DIR/s3.pid")" 2>/dev/null || true
    rm -f "$DIR/s3.pid"
  fi
}

# Whether the kubelet still has the demo's volume staged on this node.
staged() {
  grep -qs "\"$NS-demo\"" "$WEIR_KUBELET_DIR"/plugins/kubernetes.io/csi/csi.weir.io/*/vol_data.json
}

if [ "${1:-}" = down ]; then
  # The application pods go first, and the CSI plugin must still be there
  # while the kubelet unmounts their volume; only then can Weir be
  # uninstalled. (The cache's pods go with the namespace.)
  log "deleting the application pods of $NS and waiting for the kubelet to unmount the volume"
  k delete pod -n "$NS" -l 'app.kubernetes.io/name!=weir' --wait --timeout=120s 2>/dev/null || true
  for _ in $(seq 120); do staged || break; sleep 1; done
  staged && log "warning: the volume is still staged; uninstalling anyway"
  log "deleting namespace $NS (the operator removes the cache, PV and node labels)"
  k delete namespace "$NS" --ignore-not-found --wait --timeout=180s
  log "uninstalling Weir"
  helm uninstall weir -n "$RELEASE_NS" --wait --timeout 3m 2>/dev/null || true
  stop_s3
  exit 0
fi

"$WEIR_CLUSTER_DIR/up.sh"
"$WEIR_CLUSTER_DIR/image.sh" weir "$WEIR_IMAGE"

log "helm install weir charts/weir (namespace $RELEASE_NS)"
helm upgrade --install weir "$WEIR_REPO_DIR/charts/weir" \
  --namespace "$RELEASE_NS" --create-namespace \
  --set image.repository="${WEIR_IMAGE%:*}" --set image.tag="${WEIR_IMAGE##*:}" \
  --set operator.watchNamespace="${WEIR_WATCH_NAMESPACE:-}" \
  --wait --timeout 5m

# Sample data: a README, a few MiB-sized shards and many small files.
log "sample data and an S3-compatible server on $S3"
stop_s3
rm -rf "$DIR" && mkdir -p "$DIR/data/shards" "$DIR/data/labels"
echo "Weir serves these files from its cache." > "$DIR/data/README.txt"
for i in 0 1 2 3; do head -c $((24 << 20)) /dev/urandom > "$DIR/data/shards/part-$i.bin"; done
for i in $(seq 0 49); do head -c $((i * 997 + 1)) /dev/urandom > "$DIR/data/labels/$i.txt"; done
(cd "$DIR/data" && find . -type f | sort | xargs sha256sum) > "$DIR/source.sha256"
"$WEIR_CACHE/venv/bin/moto_server" -H "$S3_IP" -p "$S3_PORT" > "$DIR/s3.log" 2>&1 &
echo $! > "$DIR/s3.pid"
"$PYTHON" - "$S3" "$DIR/data" <<'EOF'
import os, sys, time, boto3
endpoint, root = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="demo", aws_secret_access_key="demo-secret")
for _ in range(100):
    try:
        s3.create_bucket(Bucket="weir-demo")
        break
    except Exception:
        time.sleep(0.2)
else:
    sys.exit(f"no S3 server at {endpoint}")
for dirpath, _, files in os.walk(root):
    for f in files:
        path = os.path.join(dirpath, f)
        s3.upload_file(path, "weir-demo", "data/" + os.path.relpath(path, root))
EOF

log "applying examples/ in namespace $NS"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -n "$NS" -f "$EXAMPLES/s3-secret.yaml"
sed "s#endpoint: http://10.88.0.1:9000#endpoint: $S3#" "$EXAMPLES/dataset.yaml" | k apply -n "$NS" -f -
k apply -n "$NS" -f "$EXAMPLES/cacheruntime.yaml"
start=$(ms)
k wait -n "$NS" dataset/demo --for=jsonpath='{.status.phase}'=Bound --timeout=300s
log "Dataset Bound after $(($(ms) - start)) ms"

# Runs the reader pod to completion and checks its checksums.
read_through_pvc() {
  local what=$1
  k delete pod -n "$NS" demo-reader --ignore-not-found --wait >/dev/null
  k apply -n "$NS" -f "$EXAMPLES/app-pod.yaml" >/dev/null
  local phase= deadline=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$deadline" ]; do
    phase=$(k get pod -n "$NS" demo-reader -o jsonpath='{.status.phase}')
    case $phase in Succeeded | Failed) break ;; esac
    sleep 1
  done
  if [ "$phase" != Succeeded ]; then
    k describe pod -n "$NS" demo-reader >&2
    k logs -n "$NS" demo-reader >&2 || true
    die "the reader pod did not succeed (phase ${phase:-unknown})"
  fi
  k logs -n "$NS" demo-reader > "$DIR/$what.out"
  grep -v '^read ' "$DIR/$what.out" > "$DIR/$what.sha256"
  if ! diff -u "$DIR/source.sha256" "$DIR/$what.sha256" >&2; then
    die "$what read: checksums differ from the source"
  fi
  log "$what read through the PVC: $(grep -c . "$DIR/$what.sha256") files, checksums match the source; $(grep '^read ' "$DIR/$what.out")"
}

read_through_pvc cold
head -3 "$DIR/cold.sha256"

log "DataLoad demo-warmup"
k apply -n "$NS" -f "$EXAMPLES/dataload.yaml"
k wait -n "$NS" dataload/demo-warmup --for=jsonpath='{.status.phase}'=Complete --timeout=300s
k wait -n "$NS" dataset/demo --for=jsonpath='{.status.cacheStates.cachedPercentage}'=100.0% --timeout=120s
read_through_pvc warm
k get datasets -n "$NS"
log "journey done: Dataset Bound and 100% cached; e2e/demo.sh down removes it"
