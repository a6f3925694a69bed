//! The FUSE DaemonSet: a dataset's FUSE client on every node labelled for
//! its runtime, its mount on the host for the CSI plugin to bind.

use super::{RenderConfig, master_addresses, merge, meta, names_of, network, scheduling, typed};
use crate::crd::{CacheRuntime, Dataset};
use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::json;

/// Where the CSI node plugin (the chart's `--fuse-fd-holder`) holds FUSE
/// pods' `/dev/fuse` descriptors, so a FUSE pod that restarts takes its
/// live mount over and readers only wait.
pub(super) const FUSE_FD_HOLDER_DIR: &str = "/var/lib/weir/csi";
pub(super) const FUSE_FD_HOLDER: &str = "/var/lib/weir/csi/fuse-fds.sock";

/// The FUSE client of every node labelled for this runtime. Its mount
/// lives on the host (Bidirectional) where the CSI plugin bind-mounts it
/// into pods; on SIGTERM `weir fuse` unmounts, unless the plugin still
/// holds its descriptor for a staged volume (a restart, not a removal).
pub fn fuse_daemonset(ds: &Dataset, rt: &CacheRuntime, cfg: &RenderConfig) -> DaemonSet {
    let names = names_of(rt);
    let spec = &rt.spec.fuse;
    let mut node_selector = spec.node_selector.clone();
    node_selector.insert(names.fuse_label(), "true".into());
    let masters = master_addresses(rt, cfg).join(",");
    let mut args = vec![
        "fuse".to_owned(),
        "--masters".into(),
        masters,
        "--mount-point".into(),
        names.host_mount_path(),
        "--allow-other".into(),
        "--fd-holder".into(),
        FUSE_FD_HOLDER.into(),
    ];
    if ds.spec.mounts.iter().all(|m| m.read_only) {
        args.push("--read-only".into());
    }
    if let Some(owner) = &ds.spec.owner {
        args.extend([
            "--uid".to_owned(),
            owner.uid.to_string(),
            "--gid".into(),
            owner.gid.to_string(),
        ]);
    }
    args.extend([
        "--metrics-listen".to_owned(),
        format!("0.0.0.0:{}", cfg.ports.fuse_metrics),
    ]);
    args.extend(spec.args.iter().cloned());
    let kubelet_pods = format!("{}/pods", cfg.kubelet_root_dir.trim_end_matches('/'));
    let mut pod = json!({
        "containers": [{
            "name": "fuse",
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "args": args,
            // Workers on the same node are read first, and counted local.
            "env": [{"name": "WEIR_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "securityContext": {"privileged": true},
            "resources": spec.resources.clone().unwrap_or_default(),
            "volumeMounts": [{
                "name": "mnt",
                "mountPath": names.host_mount_dir(),
                "mountPropagation": "Bidirectional",
            }, {
                "name": "fd-holder",
                "mountPath": FUSE_FD_HOLDER_DIR,
            }, {
                // The node's pod volumes, read-only, where the workers' tier
                // files are: blocks of this node's worker are read from them
                // (short-circuit, passthrough) instead of over the network.
                "name": "kubelet-pods",
                "mountPath": kubelet_pods,
                "readOnly": true,
                "mountPropagation": "HostToContainer",
            }],
            // Ready once the FUSE mount is there, not just its directory.
            "readinessProbe": {"exec": {"command": ["sh", "-c", format!("grep -q ' {} fuse' /proc/self/mounts", names.host_mount_path())]}, "periodSeconds": 2},
        }],
        "volumes": [
            {"name": "mnt", "hostPath": {"path": names.host_mount_dir(), "type": "DirectoryOrCreate"}},
            {"name": "fd-holder", "hostPath": {"path": FUSE_FD_HOLDER_DIR, "type": "DirectoryOrCreate"}},
            {"name": "kubelet-pods", "hostPath": {"path": kubelet_pods, "type": "Directory"}},
        ],
        "terminationGracePeriodSeconds": 30,
    });
    pod["containers"][0]["ports"] =
        json!([{"name": "metrics", "containerPort": cfg.ports.fuse_metrics}]);
    merge(&mut pod, scheduling(ds, &node_selector, &[]));
    network(rt, &mut pod);
    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta(&names, names.fuse(), "fuse", rt),
        "spec": {
            "selector": {"matchLabels": names.labels("fuse")},
            // A new image or setting never restarts a FUSE pod under the
            // pods reading through it: it takes effect when the pod next
            // starts (the node's last reader gone, or the pod deleted).
            "updateStrategy": {"type": "OnDelete"},
            "template": {"metadata": {"labels": names.labels("fuse")}, "spec": pod},
        }
    }))
}
