//! A worker's tiered store as `weir worker --tier` takes it, the volumes
//! (host paths, emptyDirs, ephemeral claims) behind its tiers, and where
//! the node sees each tier directory (so FUSE pods on the node can read
//! cached blocks from their files: short-circuit).

use crate::crd::CacheRuntime;
use crate::crd::runtime::{MediumType, VolumeType};
use crate::{Error, Result, quantity};
use serde_json::{Value, json};

/// A worker's tiers: `weir worker --tier` specs, the volumes and mounts
/// behind them, and `DIR=NODE_DIR` for each directory the node sees
/// (`weir worker --tier-host-dir`; none for an ephemeral claim, whose path
/// on the node depends on its storage driver).
pub(super) struct Tiers {
    pub specs: Vec<String>,
    pub volumes: Vec<Value>,
    pub mounts: Vec<Value>,
    pub node_dirs: Vec<String>,
}

/// The tiers of a worker; `kubelet_root` is the nodes' kubelet directory,
/// under which emptyDir volumes live.
pub(super) fn tiers(rt: &CacheRuntime, kubelet_root: &str) -> Result<Tiers> {
    let mut specs = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut node_dirs = Vec::new();
    for (i, level) in rt.spec.tieredstore.levels.iter().enumerate() {
        let field = format!("spec.tieredstore.levels[{i}]");
        let quota = quantity::bytes(&level.quota)
            .filter(|q| *q > 0)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{field}.quota {:?} is not a positive quantity",
                    level.quota
                ))
            })?;
        if level.high <= level.low {
            return Err(Error::Invalid(format!(
                "{field}.high must be greater than low"
            )));
        }
        let medium = match level.mediumtype {
            MediumType::Mem => "MEM",
            MediumType::Ssd => "SSD",
            MediumType::Hdd => "HDD",
        };
        let host_dirs: Vec<String> = level
            .path
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let mut dirs = Vec::new();
        match level.volume_type {
            VolumeType::HostPath => {
                if host_dirs.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{field}.path is required for hostPath"
                    )));
                }
                for (j, host) in host_dirs.iter().enumerate() {
                    let vol = format!("tier-{i}-{j}");
                    let dir = format!("/var/lib/weir/tier/{i}/{j}");
                    // Each worker pod has a directory of its own below the
                    // host path, named by its namespace and pod name.
                    volumes.push(json!({"name": vol, "hostPath": {"path": host, "type": "DirectoryOrCreate"}}));
                    mounts.push(json!({"name": vol, "mountPath": dir, "subPathExpr": "$(POD_NAMESPACE)-$(POD_NAME)"}));
                    node_dirs.push(format!(
                        "{dir}={}/$(POD_NAMESPACE)-$(POD_NAME)",
                        host.trim_end_matches('/')
                    ));
                    dirs.push(dir);
                }
            }
            VolumeType::EmptyDir => {
                let vol = format!("tier-{i}");
                let dir = format!("/var/lib/weir/tier/{i}");
                let mut empty = json!({"sizeLimit": level.quota});
                if level.mediumtype == MediumType::Mem {
                    empty["medium"] = json!("Memory");
                }
                volumes.push(json!({"name": vol, "emptyDir": empty}));
                mounts.push(json!({"name": vol, "mountPath": dir}));
                node_dirs.push(format!(
                    "{dir}={}/pods/$(POD_UID)/volumes/kubernetes.io~empty-dir/{vol}",
                    kubelet_root.trim_end_matches('/')
                ));
                dirs.push(dir);
            }
            VolumeType::Ephemeral => {
                let vol = format!("tier-{i}");
                let dir = format!("/var/lib/weir/tier/{i}");
                let mut claim = json!({
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": level.quota}},
                });
                if let Some(class) = host_dirs.first() {
                    claim["storageClassName"] = json!(class);
                }
                volumes.push(
                    json!({"name": vol, "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}),
                );
                mounts.push(json!({"name": vol, "mountPath": dir}));
                dirs.push(dir);
            }
        }
        specs.push(format!(
            "{medium}:{}:{quota}:{}:{}",
            dirs.join(","),
            level.high,
            level.low
        ));
    }
    Ok(Tiers {
        specs,
        volumes,
        mounts,
        node_dirs,
    })
}
