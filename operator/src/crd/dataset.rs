use k8s_openapi::api::core::v1::{NodeAffinity, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a dataset's data lives. A `CacheRuntime` of the same name and
/// namespace caches it and binds it to a PVC of that name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "data.weir.io",
    version = "v1alpha1",
    kind = "Dataset",
    namespaced,
    status = "DatasetStatus",
    shortname = "ds",
    printcolumn = r#"{"name":"UFS Total","type":"string","jsonPath":".status.ufsTotal"}"#,
    printcolumn = r#"{"name":"Cached","type":"string","jsonPath":".status.cacheStates.cached"}"#,
    printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.cacheStates.cacheCapacity"}"#,
    printcolumn = r#"{"name":"Cached %","type":"string","jsonPath":".status.cacheStates.cachedPercentage"}"#,
    printcolumn = r#"{"name":"Files","type":"string","jsonPath":".status.fileNum"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Under-storage locations, each shown as a directory of the dataset.
    #[x_kube(validation = Rule::new("size(self) > 0").message("at least one mount is required"))]
    #[schemars(length(max = 64))]
    pub mounts: Vec<Mount>,
    /// Options given to every mount (a mount's own options win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_options: BTreeMap<String, String>,
    /// Secret-backed options given to every mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_encrypt_options: Vec<EncryptOption>,
    /// How pods may mount the dataset's PVC.
    #[serde(default = "read_only_many")]
    pub access_modes: Vec<AccessMode>,
    /// Nodes the cache may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Whether another dataset's cache may share a node with this one.
    #[serde(default)]
    pub placement: Placement,
    /// Files appear owned by this user and group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

fn read_only_many() -> Vec<AccessMode> {
    vec![AccessMode::ReadOnlyMany]
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum AccessMode {
    #[default]
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOnce,
    ReadOnlyOnce,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum Placement {
    #[default]
    Exclusive,
    Shared,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    #[schemars(range(min = 0))]
    pub uid: i64,
    #[schemars(range(min = 0))]
    pub gid: i64,
}

/// An option whose value comes from a Secret; it reaches masters and
/// workers as a mounted file, never as a literal.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptOption {
    /// The option's name, e.g. `accessKeyId`, `secretAccessKey`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    pub value_from: EncryptValueSource,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptValueSource {
    pub secret_key_ref: SecretKeyRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// One under-storage location.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// `s3://bucket/prefix`, `hdfs://host:port/path`, `http(s)://...`,
    /// `local:///host/path` or `pvc://claim/path`.
    #[x_kube(validation = Rule::new("self.matches('^(s3|hdfs|http|https|local|pvc)://.+')").message(Message::Expression(r#"'mountPoint "' + self + '" must start with s3://, hdfs://, http://, https://, local:// or pvc://'"#.into())))]
    #[schemars(length(max = 2048))]
    pub mount_point: String,
    /// Directory name of this mount inside the dataset; defaults to a name
    /// derived from the mount point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
    /// Where the mount appears inside the dataset; defaults to `/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(Message::Expression(r#"'path "' + self + '" must start with /'"#.into())))]
    #[schemars(length(max = 4096))]
    pub path: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypt_options: Vec<EncryptOption>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum DatasetPhase {
    #[default]
    NotBound,
    Bound,
    Failed,
}

/// What the operator last observed of the dataset and its cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    #[serde(default)]
    pub phase: DatasetPhase,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ufs_total: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_num: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_states: Option<CacheStates>,
    /// The mounts as the master has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountStatus>,
    /// The runtime bound to the dataset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountStatus {
    pub mount_point: String,
    pub path: String,
    pub read_only: bool,
    /// How writes reach the under-storage (`CACHE_THROUGH` ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub write_type: String,
    /// When known paths are checked for changes: `Never (immutable)`,
    /// `Always`, or `Interval (60s)`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sync_policy: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStates {
    pub cached: String,
    pub cache_capacity: String,
    pub cached_percentage: String,
    pub cache_hit_ratio: String,
}
