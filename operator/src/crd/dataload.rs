use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Five cron fields (minute hour day-of-month month day-of-week) or a
/// macro; the controller parses the values themselves.
pub const CRON_RULE: &str = r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9*/,?A-Za-z-]+( +[0-9*/,?A-Za-z-]+){4})$')";

/// Warms a dataset's cache: a load job on its runtime's master, once or on
/// a cron schedule.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "data.weir.io",
    version = "v1alpha1",
    kind = "DataLoad",
    namespaced,
    status = "DataLoadStatus",
    shortname = "dl",
    printcolumn = r#"{"name":"Dataset","type":"string","jsonPath":".spec.dataset.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress.percentage"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule { field_path: Some(".schedule".into()), ..Rule::new("!has(self.policy) || self.policy != 'Cron' || (has(self.schedule) && size(self.schedule) > 0)").message("schedule is required when policy is Cron") })]
pub struct DataLoadSpec {
    pub dataset: DatasetRef,
    /// Paths inside the dataset; the whole dataset when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub target: Vec<LoadTarget>,
    /// List directories from the under-storage again before loading.
    #[serde(default)]
    pub load_metadata: bool,
    #[serde(default)]
    pub policy: LoadPolicy,
    /// Cron schedule for `policy: Cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(CRON_RULE).message(Message::Expression(r#"'schedule "' + self + '" must be a cron expression of five fields (or @hourly, @daily ...)'"#.into())))]
    #[schemars(length(max = 128))]
    pub schedule: Option<String>,
    /// Delete the DataLoad this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Job options: `parallelism`, `bandwidth` (bytes per second),
    /// `loadWhatFits`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Defaults to the DataLoad's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadTarget {
    /// A path inside the dataset (`/` is all of it); globs allowed.
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(Message::Expression(r#"'path "' + self + '" must start with /'"#.into())))]
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Copies of each block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum LoadPolicy {
    #[default]
    Once,
    Cron,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum LoadPhase {
    #[default]
    Pending,
    Executing,
    Complete,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// `bytes_done / bytes_total`, as `42.0%`.
    pub percentage: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataLoadStatus {
    #[serde(default)]
    pub phase: LoadPhase,
    /// The master's jobs of the current (or last) run: one per distinct
    /// replica count among the targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_ids: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<LoadProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
    /// When the current (or last) run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
}
