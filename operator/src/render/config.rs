//! The masters' and workers' settings files (`<name>-config`), and the
//! digest of them that pod templates carry.

use super::mounts::desired_mounts;
use super::tiers::tiers;
use super::{RenderConfig, master_addresses, meta, names_of, typed};
use crate::Result;
use crate::crd::{CacheRuntime, Dataset};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `options` as YAML values, so `heartbeat_ms: "200"` reaches the component
/// as the number it is.
fn option_values(options: &BTreeMap<String, String>) -> serde_json::Map<String, Value> {
    options
        .iter()
        .map(|(k, v)| {
            let value =
                serde_yaml::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.clone()));
            (k.clone(), value)
        })
        .collect()
}

/// `<name>-config`: the masters' and workers' settings files. Never a
/// secret in here: credentials are files from Secret volumes.
pub fn config_map(ds: &Dataset, rt: &CacheRuntime, cfg: &RenderConfig) -> Result<ConfigMap> {
    let names = names_of(rt);
    let peers: Vec<String> = master_addresses(rt, cfg)
        .into_iter()
        .enumerate()
        .map(|(i, a)| format!("{i}={a}"))
        .collect();
    let mut master = option_values(&rt.spec.master.component.options);
    master.insert("peers".into(), json!(peers));
    master.insert(
        "listen".into(),
        json!(format!("0.0.0.0:{}", cfg.ports.master)),
    );
    master.insert("data_dir".into(), json!("/var/lib/weir/master"));
    let tier_specs = tiers(rt, &cfg.kubelet_root_dir)?.specs;
    let mut worker = option_values(&rt.spec.worker.options);
    worker.insert("masters".into(), json!(master_addresses(rt, cfg)));
    worker.insert(
        "data_listen".into(),
        json!(format!("0.0.0.0:{}", cfg.ports.worker_data)),
    );
    worker.insert(
        "http_listen".into(),
        json!(format!("0.0.0.0:{}", cfg.ports.worker_http)),
    );
    worker.insert("state_dir".into(), json!("/var/lib/weir/worker"));
    worker.insert("tiers".into(), json!(tier_specs));
    // Validated here so a bad mount fails the reconcile, not a pod.
    desired_mounts(ds, rt)?;
    let yaml = |m: serde_json::Map<String, Value>| {
        serde_yaml::to_string(&Value::Object(m)).expect("JSON values render as YAML")
    };
    Ok(typed(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&names, names.config(), "config", rt),
        "data": {"master.yaml": yaml(master), "worker.yaml": yaml(worker)},
    })))
}

/// A digest of the rendered config on the pod template, so a config change
/// rolls the pods that read it, and nothing else does.
pub(super) fn config_annotation(
    ds: &Dataset,
    rt: &CacheRuntime,
    cfg: &RenderConfig,
) -> Result<Value> {
    let cm = config_map(ds, rt, cfg)?;
    Ok(json!({"weir.io/config-hash": config_hash(cm.data.as_ref())}))
}

/// SHA-256 of the config files, each as its name and content behind their
/// lengths, in name order: the same files give the same digest on every
/// build and compiler, so an upgraded operator rolls no pod by itself.
pub fn config_hash(data: Option<&BTreeMap<String, String>>) -> String {
    let mut h = Sha256::new();
    for (name, content) in data.into_iter().flatten() {
        for part in [name, content] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
