use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a dataset of the same name and namespace is cached: the masters, the
/// workers and their tiered storage, and the FUSE clients.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "data.weir.io",
    version = "v1alpha1",
    kind = "CacheRuntime",
    namespaced,
    status = "CacheRuntimeStatus",
    shortname = "cr",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.workerNumberReady","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Masters","type":"string","jsonPath":".status.masterPhase"}"#,
    printcolumn = r#"{"name":"Workers","type":"string","jsonPath":".status.workerPhase"}"#,
    printcolumn = r#"{"name":"Ready Workers","type":"integer","jsonPath":".status.workerNumberReady"}"#,
    printcolumn = r#"{"name":"FUSE","type":"string","jsonPath":".status.fusePhase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CacheRuntimeSpec {
    #[serde(default)]
    pub master: MasterSpec,
    #[serde(default)]
    pub worker: ComponentSpec,
    /// Workers.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    pub tieredstore: TieredStore,
    #[serde(default)]
    pub fuse: FuseSpec,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default)]
    pub data: DataSpec,
    #[serde(default)]
    pub management: Management,
    /// Image of the masters, workers and FUSE pods. Unset, a runtime keeps
    /// the operator's image of the day it was created (`status.image`), so
    /// upgrading Weir never restarts a running cache; set it to move one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn one() -> i32 {
    1
}

/// Settings every component takes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Settings passed to the component (`weir master|worker --config`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MasterSpec {
    /// Raft members: 1, 3 or 5 (an even count adds no fault tolerance).
    #[serde(default = "one")]
    // An enum, not a CEL rule: the apiserver's refusal then shows the value
    // ("Unsupported value: 2: supported values: ..."); a CEL message that
    // prints a number costs more than a CRD's budget.
    #[schemars(extend("enum" = [1, 3, 5]))]
    pub replicas: i32,
    #[serde(flatten)]
    pub component: ComponentSpec,
}

impl Default for MasterSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            component: ComponentSpec::default(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TieredStore {
    /// Highest (fastest) first.
    #[x_kube(validation = Rule::new("size(self) > 0").message("at least one tier level is required"))]
    #[schemars(length(max = 3))]
    pub levels: Vec<Level>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum MediumType {
    #[default]
    #[serde(rename = "MEM")]
    Mem,
    #[serde(rename = "SSD")]
    Ssd,
    #[serde(rename = "HDD")]
    Hdd,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VolumeType {
    #[default]
    EmptyDir,
    HostPath,
    Ephemeral,
}

/// One storage tier of every worker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule { field_path: Some(".high".into()), ..Rule::new("!has(self.high) || !has(self.low) || self.high > self.low").message("high must be greater than low (each a fraction of the quota)") })]
pub struct Level {
    pub mediumtype: MediumType,
    #[serde(default)]
    pub volume_type: VolumeType,
    /// Directories, comma separated (host paths for hostPath).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Bytes of this tier per worker, a quantity such as `2Gi`.
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message(Message::Expression(r#"'quota "' + self + '" must be a positive quantity such as 2Gi'"#.into())))]
    #[schemars(length(max = 64))]
    pub quota: String,
    /// Fraction of the quota above which eviction starts.
    #[serde(default = "high")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub high: f64,
    /// Fraction of the quota eviction frees down to.
    #[serde(default = "low")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub low: f64,
}

fn high() -> f64 {
    0.95
}

fn low() -> f64 {
    0.8
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum CleanPolicy {
    /// FUSE pods go when no pod on the node uses the dataset.
    #[default]
    OnDemand,
    /// FUSE pods stay until the runtime is deleted.
    OnRuntimeDeleted,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FuseSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra `weir fuse` arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default)]
    pub clean_policy: CleanPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum NetworkMode {
    HostNetwork,
    #[default]
    ContainerNetwork,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataSpec {
    /// Copies of each cached block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: Option<u32>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Management {
    #[serde(default)]
    pub metadata_sync_policy: MetadataSyncPolicy,
}

/// When the masters check paths they already know against the
/// under-storage. A changed file is noticed at the next check; its cached
/// blocks are never served for the new version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule { field_path: Some(".syncIntervalSeconds".into()), ..Rule::new("!has(self.mode) || self.mode != 'Interval' || !has(self.syncIntervalSeconds) || self.syncIntervalSeconds > 0").message("syncIntervalSeconds must be above 0 with mode Interval, not 0 (below 0 is refused as out of range); use mode Never to load once") })]
pub struct MetadataSyncPolicy {
    /// `Interval` (the default) checks a path on lookup or open once its last
    /// check is `syncIntervalSeconds` old; `Always` checks on every open
    /// (one under-storage stat each); `Never` loads each path once, for
    /// datasets that never change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SyncMode>,
    /// The interval of `Interval`, 60 when unset. Without a `mode`, 0 means
    /// `Never`, as it did before modes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub sync_interval_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SyncMode {
    Never,
    Interval,
    Always,
}

impl MetadataSyncPolicy {
    /// The policy the masters apply.
    pub fn policy(&self) -> Result<weir_api::SyncPolicy, String> {
        use std::time::Duration;
        use weir_api::SyncPolicy;
        let interval =
            || Duration::from_secs(self.sync_interval_seconds.unwrap_or(60).max(0) as u64);
        match (self.mode, self.sync_interval_seconds) {
            (Some(SyncMode::Never), _) => Ok(SyncPolicy::Never),
            (Some(SyncMode::Always), _) => Ok(SyncPolicy::Always),
            (Some(SyncMode::Interval), Some(s)) if s <= 0 => Err(
                "syncIntervalSeconds must be above 0 with mode Interval; use mode Never to \
                 load once"
                    .into(),
            ),
            (None, Some(0)) => Ok(SyncPolicy::Never),
            (Some(SyncMode::Interval) | None, _) => Ok(SyncPolicy::Interval(interval())),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub enum RuntimePhase {
    #[default]
    NotReady,
    PartialReady,
    Ready,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheRuntimeStatus {
    #[serde(default)]
    pub master_phase: RuntimePhase,
    #[serde(default)]
    pub worker_phase: RuntimePhase,
    #[serde(default)]
    pub fuse_phase: RuntimePhase,
    #[serde(default)]
    pub master_number_ready: i32,
    #[serde(default)]
    pub worker_number_ready: i32,
    #[serde(default)]
    pub fuse_number_ready: i32,
    /// Label selector of the worker pods (the scale subresource's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_time: Option<String>,
    /// A scale-in in progress: the leaving workers, drained before their
    /// pods go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// The image the runtime's pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// With `networkMode: HostNetwork`, the first of the four host ports
    /// its pods listen on (master, worker data, worker HTTP, FUSE metrics),
    /// chosen once and held by no other runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_base: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// Pods of the leaving workers.
    pub pods: Vec<String>,
    /// Their addresses, as the master knows the workers.
    pub hosts: Vec<String>,
    /// The job copying blocks only they hold to the other workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    pub started: String,
    /// The pods may go (drained, or the wait ran out).
    #[serde(default)]
    pub released: bool,
}
