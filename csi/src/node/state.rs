//! What the plugin has staged and published, as kept in its state file:
//! a restarted plugin still knows which mounts to repair and which labels
//! to drop.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A staged volume, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    pub volume_id: String,
    pub mount_path: PathBuf,
    /// The node label that brought the FUSE pod here, if any.
    pub fuse_label: Option<String>,
    /// Drop the label when the last volume using it is unstaged.
    pub on_demand: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub volume_id: String,
    pub staging: PathBuf,
    pub sub_path: Option<String>,
    pub read_only: bool,
    /// The pod the kubelet published for (with `podInfoOnMount`), so a
    /// repair can tell its owner.
    #[serde(default)]
    pub pod: Option<PodRef>,
}

/// A pod, as the kubelet names it in a publish request's volume context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    pub(super) fn from_context(
        context: &std::collections::HashMap<String, String>,
    ) -> Option<Self> {
        let get = |k: &str| context.get(k).filter(|v| !v.is_empty()).cloned();
        Some(PodRef {
            namespace: get("csi.storage.k8s.io/pod.namespace")?,
            name: get("csi.storage.k8s.io/pod.name")?,
            uid: get("csi.storage.k8s.io/pod.uid")?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub staged: BTreeMap<PathBuf, Staged>,
    pub published: BTreeMap<PathBuf, Published>,
}
