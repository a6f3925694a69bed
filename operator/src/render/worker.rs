//! The workers: their StatefulSet, tiered store, and placement on nodes
//! (Fluid's `Exclusive` and `Shared`).

use super::config::config_annotation;
use super::mounts::data_volumes;
use super::tiers::tiers;
use super::{RenderConfig, merge, meta, names_of, network, scheduling, typed};
use crate::Result;
use crate::crd::dataset::Placement;
use crate::crd::{CacheRuntime, Dataset};
use crate::names::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{Value, json};

pub fn worker_statefulset(
    ds: &Dataset,
    rt: &CacheRuntime,
    cfg: &RenderConfig,
) -> Result<StatefulSet> {
    let names = names_of(rt);
    let spec = &rt.spec.worker;
    let (mut volumes, mut mounts) = data_volumes(ds, rt)?;
    let tiers = tiers(rt, &cfg.kubelet_root_dir)?;
    volumes.extend(tiers.volumes);
    mounts.extend(tiers.mounts);
    volumes.push(json!({"name": "config", "configMap": {"name": names.config()}}));
    volumes.push(json!({"name": "state", "emptyDir": {}}));
    mounts.push(json!({"name": "config", "mountPath": "/etc/weir/config", "readOnly": true}));
    mounts.push(json!({"name": "state", "mountPath": "/var/lib/weir/worker"}));
    let mut env = vec![
        json!({"name": "WEIR_WORKER_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "WEIR_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}),
        // After the three above, which it names: FUSE pods on the node open
        // cached blocks at these paths (short-circuit).
        json!({"name": "WEIR_WORKER_TIER_HOST_DIRS", "value": tiers.node_dirs.join(";")}),
    ];
    env.extend(spec.env.iter().map(|e| json!(e)));
    let mut pod = json!({
        "containers": [{
            "name": "worker",
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "args": ["worker", "--config", "/etc/weir/config/worker.yaml"],
            "env": env,
            "ports": [
                {"name": "data", "containerPort": cfg.ports.worker_data},
                {"name": "http", "containerPort": cfg.ports.worker_http},
            ],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": cfg.ports.worker_http}, "periodSeconds": 2},
            "resources": spec.resources.clone().unwrap_or_default(),
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    });
    merge(
        &mut pod,
        scheduling(ds, &spec.node_selector, &spec.tolerations),
    );
    pod["affinity"]["podAntiAffinity"] = placement(ds, &names);
    network(rt, &mut pod);
    let mut labels = names.labels("worker");
    labels.insert(PLACEMENT_LABEL.into(), placement_name(ds).into());
    Ok(typed(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(&names, names.worker(), "worker", rt),
        "spec": {
            "serviceName": names.worker(),
            "replicas": rt.spec.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": names.labels("worker")},
            "template": {"metadata": {"labels": labels, "annotations": config_annotation(ds, rt, cfg)?}, "spec": pod},
        }
    })))
}

/// Label of worker pods saying how they share nodes.
const PLACEMENT_LABEL: &str = "weir.io/placement";

fn placement_name(ds: &Dataset) -> &'static str {
    match ds.spec.placement {
        Placement::Exclusive => "Exclusive",
        Placement::Shared => "Shared",
    }
}

/// Fluid's placement: a runtime's workers are one per node (a second one
/// on a node would only split its memory and disks); an `Exclusive`
/// dataset's workers share no node with another runtime's workers;
/// `Shared` ones share nodes, except with an exclusive dataset's.
fn placement(ds: &Dataset, names: &RuntimeNames) -> Value {
    let own = json!({
        "labelSelector": {"matchLabels": names.labels("worker")},
        "topologyKey": "kubernetes.io/hostname",
    });
    let mut expressions = vec![
        json!({"key": "app.kubernetes.io/name", "operator": "In", "values": ["weir"]}),
        json!({"key": "app.kubernetes.io/component", "operator": "In", "values": ["worker"]}),
        json!({"key": "app.kubernetes.io/instance", "operator": "NotIn", "values": [names.name]}),
    ];
    if ds.spec.placement == Placement::Shared {
        expressions
            .push(json!({"key": PLACEMENT_LABEL, "operator": "In", "values": ["Exclusive"]}));
    }
    json!({"requiredDuringSchedulingIgnoredDuringExecution": [own, {
        "labelSelector": {"matchExpressions": expressions},
        "namespaceSelector": {},
        "topologyKey": "kubernetes.io/hostname",
    }]})
}
