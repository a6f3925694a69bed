//! Weir's custom resources as the e2e tests make them: a Dataset over a
//! bucket of a test S3 server, its CacheRuntime, the credentials Secret,
//! and waits for them to be Bound and Ready.

use crate::weir::BridgeS3;
use crate::{TestNamespace, install_crd, wait_for};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use std::time::Duration;
use weir_operator::crd::dataset::DatasetPhase;
use weir_operator::crd::{CacheRuntime, Dataset};

pub async fn install_crds(ns: &TestNamespace) -> anyhow::Result<()> {
    for crd in weir_operator::crd::all() {
        install_crd(&ns.client, &crd).await?;
    }
    Ok(())
}

pub fn dataset(name: &str, s3: &BridgeS3) -> Dataset {
    let secret = |key: &str| json!({"secretKeyRef": {"name": "s3-creds", "key": key}});
    serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": "Dataset",
        "metadata": {"name": name},
        // Tests run side by side on one node: their caches share it.
        "spec": {"placement": "Shared", "mounts": [{
            "mountPoint": format!("s3://{}/data", s3.bucket),
            "name": "data",
            "options": {"endpoint": s3.endpoint},
            "encryptOptions": [
                {"name": "accessKeyId", "valueFrom": secret("accessKeyId")},
                {"name": "secretAccessKey", "valueFrom": secret("secretAccessKey")},
            ],
        }]},
    }))
    .expect("dataset literal")
}

pub fn runtime(name: &str, masters: i32, workers: i32) -> CacheRuntime {
    serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": "CacheRuntime",
        "metadata": {"name": name},
        "spec": {
            "master": {"replicas": masters, "options": {"worker_timeout_ms": "4000"}},
            "replicas": workers,
            "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "256Mi", "high": 0.95, "low": 0.8}]},
        },
    }))
    .expect("runtime literal")
}

pub async fn create_secret(ns: &TestNamespace, key: &str, secret: &str) -> anyhow::Result<()> {
    ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "s3-creds",
        &format!("--from-literal=accessKeyId={key}"),
        &format!("--from-literal=secretAccessKey={secret}"),
    ])?;
    Ok(())
}

pub async fn wait_bound(
    ns: &TestNamespace,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Dataset> {
    let datasets: Api<Dataset> = ns.api();
    Ok(
        wait_for(&format!("Dataset {name} Bound"), timeout, || async {
            let ds = datasets.get(name).await?;
            let bound = ds
                .status
                .as_ref()
                .is_some_and(|s| s.phase == DatasetPhase::Bound);
            Ok(bound.then_some(ds))
        })
        .await?,
    )
}

pub async fn wait_ready(
    ns: &TestNamespace,
    sts: &str,
    replicas: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<StatefulSet> = ns.api();
    wait_for(
        &format!("StatefulSet {sts} {replicas} ready"),
        timeout,
        || async {
            let s = api.get_opt(sts).await?;
            let ready = s.and_then(|s| s.status).is_some_and(|st| {
                st.ready_replicas.unwrap_or(0) == replicas && st.replicas == replicas
            });
            Ok(ready.then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// The nodes the workers of runtime `name` run on, each once, sorted.
pub async fn worker_nodes(ns: &TestNamespace, name: &str) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = ns.api();
    let workers = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={name},app.kubernetes.io/component=worker"
        )))
        .await?;
    let mut nodes: Vec<String> = workers
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// The Events of objects named `name`, one per line: kind, reason, message.
pub fn events_of(ns: &TestNamespace, name: &str) -> String {
    ns.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=KIND:.involvedObject.kind,REASON:.reason,MESSAGE:.message",
    ])
    .unwrap_or_default()
}
