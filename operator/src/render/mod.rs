//! What a `Dataset` + `CacheRuntime` pair becomes: the objects the runtime
//! controller applies and the mounts it asks the master for. Pure functions
//! of the two specs, so every branch is unit-tested without an apiserver.
//!
//! - [`host_paths`]: the host paths a pair needs, granted by the admin or not
//! - [`mounts`]: the dataset's mounts, their credential files and volumes
//! - [`config`]: the settings ConfigMap and its digest on pod templates
//! - [`tiers`]: a worker's tiered store and the volumes behind it
//! - [`master`], [`worker`], [`fuse`]: each component's objects
//! - [`volume`]: the dataset's PV and PVC
//! - [`ports`]: the ports the pods listen on, a block of their own on the
//!   host's network

mod config;
mod fuse;
mod host_paths;
mod master;
mod mounts;
pub mod ports;
#[cfg(test)]
mod tests;
mod tiers;
mod volume;
mod worker;

pub use config::{config_hash, config_map};
pub use fuse::fuse_daemonset;
pub use host_paths::{HostPathUse, check_host_paths, host_paths};
pub use master::{client_service, master_service, master_statefulset};
pub use mounts::{desired_mounts, mount_name};
pub use ports::Ports;
pub use volume::{persistent_volume, persistent_volume_claim};
pub use worker::worker_statefulset;

use crate::crd::runtime::NetworkMode;
use crate::crd::{CacheRuntime, Dataset};
use crate::names::RuntimeNames;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Operator-wide settings the rendered objects depend on.
#[derive(Debug, Clone)]
pub struct RenderConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub cluster_domain: String,
    /// Host path prefixes the cluster admin lets runtimes mount.
    pub allowed_host_paths: Vec<String>,
    /// The ports of the runtime being rendered.
    pub ports: Ports,
    /// The nodes' kubelet directory (emptyDir volumes live under it).
    pub kubelet_root_dir: String,
}

pub(super) fn owner(rt: &CacheRuntime) -> OwnerReference {
    rt.controller_owner_ref(&())
        .expect("a stored CacheRuntime has a uid")
}

pub(super) fn meta(
    names: &RuntimeNames,
    name: String,
    component: &str,
    rt: &CacheRuntime,
) -> Value {
    json!({
        "name": name,
        "namespace": names.namespace,
        "labels": names.labels(component),
        "ownerReferences": [owner(rt)],
    })
}

pub(super) fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("rendered objects match their API types")
}

pub(super) fn names_of(rt: &CacheRuntime) -> RuntimeNames {
    RuntimeNames::new(&rt.namespace().unwrap_or_default(), &rt.name_any())
}

pub(super) fn scheduling(
    ds: &Dataset,
    node_selector: &BTreeMap<String, String>,
    tolerations: &[k8s_openapi::api::core::v1::Toleration],
) -> Value {
    let mut tol: Vec<Value> = ds.spec.tolerations.iter().map(|t| json!(t)).collect();
    tol.extend(tolerations.iter().map(|t| json!(t)));
    let mut v = json!({"nodeSelector": node_selector, "tolerations": tol});
    if let Some(aff) = &ds.spec.node_affinity {
        v["affinity"] = json!({"nodeAffinity": aff});
    }
    v
}

pub(super) fn network(rt: &CacheRuntime, pod: &mut Value) {
    if rt.spec.network_mode == NetworkMode::HostNetwork {
        pod["hostNetwork"] = json!(true);
        pod["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
}

pub(super) fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// `host:port` of every master, by their stable DNS names.
pub fn master_addresses(rt: &CacheRuntime, cfg: &RenderConfig) -> Vec<String> {
    let names = names_of(rt);
    (0..rt.spec.master.replicas.max(1))
        .map(|i| {
            format!(
                "{}:{}",
                names.master_host(i, &cfg.cluster_domain),
                cfg.ports.master
            )
        })
        .collect()
}
