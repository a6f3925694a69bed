//! Pods the tests make to use a dataset: a reader that keeps a dataset's
//! PVC mounted at `/data` (read with `kubectl exec`), and the wait for a
//! pod to run.

use crate::{TestNamespace, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;
use std::time::Duration;

/// A pod that mounts claim `claim` read-only at `/data` and sleeps; on
/// `node` when given, else where the scheduler puts it.
pub fn reader_pod(name: &str, claim: &str, node: Option<&str>) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "labels": {"app": "reader"}},
        "spec": {
            "containers": [{"name": "app", "image": "weir.io/e2e:dev", "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                // Mounts the CSI plugin repairs on the host reach the container.
                "volumeMounts": [{"name": "data", "mountPath": "/data", "mountPropagation": "HostToContainer"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}],
            "terminationGracePeriodSeconds": 0,
        }
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    serde_json::from_value(pod).expect("pod literal")
}

/// Waits for `pod` to be Running.
pub async fn wait_running(ns: &TestNamespace, pod: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = ns.api();
    Ok(wait_for(
        &format!("pod {pod} running"),
        Duration::from_secs(180),
        || async {
            let p = pods.get(pod).await?;
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            Ok(running.then_some(p))
        },
    )
    .await?)
}

/// The SHA-256 (hex) of `path` as `pod` reads it, if it can.
pub fn sha_in(ns: &TestNamespace, pod: &str, path: &str) -> Option<String> {
    let out = ns.kubectl(&["exec", pod, "--", "sha256sum", path]).ok()?;
    out.split_whitespace().next().map(str::to_owned)
}
