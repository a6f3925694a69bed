//! The masters: their StatefulSet (Raft peers with stable names), the
//! headless Service that names them and the Service clients use.

use super::config::config_annotation;
use super::mounts::data_volumes;
use super::{RenderConfig, merge, meta, names_of, network, scheduling, typed};
use crate::Result;
use crate::crd::{CacheRuntime, Dataset};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

/// The headless Service that gives masters stable names for Raft (also
/// before they are ready: a new group must find its peers to elect).
pub fn master_service(rt: &CacheRuntime, cfg: &RenderConfig) -> Service {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&names, names.master(), "master", rt),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": names.labels("master"),
            "ports": [{"name": "rpc", "port": cfg.ports.master, "targetPort": cfg.ports.master}],
        }
    }))
}

/// The Service clients use; any ready master redirects to the leader.
pub fn client_service(rt: &CacheRuntime, cfg: &RenderConfig) -> Service {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&names, names.master_client(), "master", rt),
        "spec": {
            "selector": names.labels("master"),
            "ports": [{"name": "rpc", "port": cfg.ports.master, "targetPort": cfg.ports.master}],
        }
    }))
}

pub fn master_statefulset(
    ds: &Dataset,
    rt: &CacheRuntime,
    cfg: &RenderConfig,
) -> Result<StatefulSet> {
    let names = names_of(rt);
    let spec = &rt.spec.master;
    let (mut volumes, mut mounts) = data_volumes(ds, rt)?;
    volumes.push(json!({"name": "config", "configMap": {"name": names.config()}}));
    volumes.push(json!({"name": "meta", "emptyDir": {}}));
    mounts.push(json!({"name": "config", "mountPath": "/etc/weir/config", "readOnly": true}));
    mounts.push(json!({"name": "meta", "mountPath": "/var/lib/weir/master"}));
    // The Raft id comes from the pod's name: with the host's network the
    // host name is the node's. `kubectl exec ... weir fs|admin` in the pod
    // finds its master on whatever port the runtime has.
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "WEIR_MASTERS", "value": format!("127.0.0.1:{}", cfg.ports.master)}),
    ];
    env.extend(spec.component.env.iter().map(|e| json!(e)));
    let mut pod = json!({
        "containers": [{
            "name": "master",
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "args": ["master", "--config", "/etc/weir/config/master.yaml", "--id-from-hostname"],
            "env": env,
            "ports": [{"name": "rpc", "containerPort": cfg.ports.master}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": cfg.ports.master}, "periodSeconds": 2, "failureThreshold": 2},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": cfg.ports.master}, "periodSeconds": 10, "failureThreshold": 6},
            "resources": spec.component.resources.clone().unwrap_or_default(),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    });
    merge(
        &mut pod,
        scheduling(
            ds,
            &spec.component.node_selector,
            &spec.component.tolerations,
        ),
    );
    network(rt, &mut pod);
    Ok(typed(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(&names, names.master(), "master", rt),
        "spec": {
            "serviceName": names.master(),
            "replicas": spec.replicas,
            // Raft needs a quorum up before any master is ready.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": names.labels("master")},
            "template": {"metadata": {"labels": names.labels("master"), "annotations": config_annotation(ds, rt, cfg)?}, "spec": pod},
        }
    })))
}
