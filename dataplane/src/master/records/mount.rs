//! The mount-table record: a mount as the user asked for it, and the id
//! the master gave it (workers keep under-storage clients by that id).

use serde::{Deserialize, Serialize};
use weir_api::MountSpec;

/// One entry of the mount table. Its encoding is the spec's fields then
/// the id, as stored snapshots and logs hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub spec: MountSpec,
    pub mount_id: u64,
}

impl MountInfo {
    /// The mount's path in the namespace.
    pub fn path(&self) -> &str {
        &self.spec.path
    }
}
