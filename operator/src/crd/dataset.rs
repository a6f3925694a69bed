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
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0").message("at least one mount is required"))]
    #[schemars(length(max = 64))]
    pub mounts: Vec<Mount>,
    /// Options given to every mount (a mount's own options win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_options: BTreeMap<String, String>,
}

/// One under-storage location.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// `s3://bucket/prefix`, `hdfs://host:port/path`, `http(s)://...`,
    /// `local:///host/path` or `pvc://claim/path`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(s3|hdfs|http|https|local|pvc)://.+')").message("mountPoint must start with s3://, hdfs://, http://, https://, local:// or pvc://"))]
    #[schemars(length(max = 2048))]
    pub mount_point: String,
    /// Directory name of this mount inside the dataset; defaults to a name
    /// derived from the mount point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
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
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStates {
    pub cached: String,
    pub cache_capacity: String,
    pub cached_percentage: String,
    pub cache_hit_ratio: String,
}
