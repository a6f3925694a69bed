//! What a `Dataset` + `CacheRuntime` pair becomes: the objects the runtime
//! controller applies and the mounts it asks the master for. Pure functions
//! of the two specs, so every branch is unit-tested without an apiserver.

use crate::crd::dataset::{EncryptOption, Mount, Placement};
use crate::crd::runtime::{MediumType, NetworkMode, VolumeType};
use crate::crd::{CacheRuntime, Dataset};
use crate::names::*;
use crate::{Error, Result, quantity};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use weir_api::{MountSpec, WriteType};

/// Operator-wide settings the rendered objects depend on.
#[derive(Debug, Clone)]
pub struct RenderConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub cluster_domain: String,
}

/// A volume master and worker pods need for a mount (`local://`, `pvc://`).
#[derive(Debug, Clone, PartialEq)]
enum UfsVolume {
    HostPath(String),
    Claim(String),
}

/// Keys of `options` that configure Weir, not the under-storage.
const WEIR_OPTIONS: [&str; 1] = ["writeType"];

/// The directory name a mount gets when it names none: the last segment of
/// its location (`s3://bucket/a/b` -> `b`, `s3://bucket` -> `bucket`).
pub fn mount_name(m: &Mount) -> String {
    if let Some(n) = &m.name {
        return n.clone();
    }
    let rest = m
        .mount_point
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(&m.mount_point);
    rest.split('/')
        .rev()
        .find(|s| !s.is_empty())
        .unwrap_or("data")
        .to_owned()
}

fn secret_file(opt: &EncryptOption) -> String {
    format!(
        "{SECRETS_DIR}/{}/{}",
        opt.value_from.secret_key_ref.name, opt.value_from.secret_key_ref.key
    )
}

/// Each mount's location, options and credential files as the master gets
/// them, plus the volume it needs in the pods.
fn mounts_with_volumes(
    ds: &Dataset,
    rt: &CacheRuntime,
) -> Result<Vec<(MountSpec, Option<UfsVolume>)>> {
    let sync_interval_ms = (rt
        .spec
        .management
        .metadata_sync_policy
        .sync_interval_seconds
        .max(0) as u64)
        * 1000;
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for (i, m) in ds.spec.mounts.iter().enumerate() {
        let field = format!("spec.mounts[{i}]");
        let name = mount_name(m);
        let path = m.path.clone().unwrap_or_else(|| format!("/{name}"));
        if path == "/" || path.split('/').any(|s| s == "..") {
            return Err(Error::Invalid(format!(
                "{field}.path {path:?}: a mount needs its own directory below /"
            )));
        }
        if let Some(other) = seen.insert(path.clone(), i) {
            return Err(Error::Invalid(format!(
                "{field}: path {path} is also the path of spec.mounts[{other}]"
            )));
        }
        let (scheme, rest) = m
            .mount_point
            .split_once("://")
            .ok_or_else(|| Error::Invalid(format!("{field}.mountPoint has no scheme")))?;
        let (ufs_uri, volume) = match scheme {
            "s3" | "http" | "https" | "hdfs" => (m.mount_point.clone(), None),
            "local" => {
                let host = format!("/{}", rest.trim_matches('/'));
                (
                    format!("local://{UFS_DIR}/{i}"),
                    Some(UfsVolume::HostPath(host)),
                )
            }
            "pvc" => {
                let (claim, sub) = rest.split_once('/').unwrap_or((rest, ""));
                if claim.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{field}.mountPoint {:?} names no claim",
                        m.mount_point
                    )));
                }
                let sub = sub.trim_matches('/');
                let dir = if sub.is_empty() {
                    format!("{UFS_DIR}/{i}")
                } else {
                    format!("{UFS_DIR}/{i}/{sub}")
                };
                (
                    format!("local://{dir}"),
                    Some(UfsVolume::Claim(claim.into())),
                )
            }
            other => {
                return Err(Error::Invalid(format!(
                    "{field}.mountPoint: scheme {other}:// is not supported"
                )));
            }
        };
        let mut options = ds.spec.shared_options.clone();
        options.extend(m.options.clone());
        let write_type = match options.get("writeType") {
            None => WriteType::CacheThrough,
            Some(w) => w
                .parse()
                .map_err(|e| Error::Invalid(format!("{field}.options.writeType: {e}")))?,
        };
        options.retain(|k, _| !WEIR_OPTIONS.contains(&k.as_str()));
        let mut credential_files = BTreeMap::new();
        for opt in ds
            .spec
            .shared_encrypt_options
            .iter()
            .chain(&m.encrypt_options)
        {
            credential_files.insert(opt.name.clone(), secret_file(opt));
        }
        out.push((
            MountSpec {
                path,
                ufs_uri,
                read_only: m.read_only,
                write_type,
                sync_interval_ms,
                options,
                credential_files,
            },
            volume,
        ));
    }
    Ok(out)
}

pub fn desired_mounts(ds: &Dataset, rt: &CacheRuntime) -> Result<Vec<MountSpec>> {
    Ok(mounts_with_volumes(ds, rt)?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

/// Secrets the dataset's options come from, each with the keys used.
fn secrets(ds: &Dataset) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let all = ds
        .spec
        .shared_encrypt_options
        .iter()
        .chain(ds.spec.mounts.iter().flat_map(|m| &m.encrypt_options));
    for opt in all {
        let r = &opt.value_from.secret_key_ref;
        let keys = out.entry(r.name.clone()).or_default();
        if !keys.contains(&r.key) {
            keys.push(r.key.clone());
        }
    }
    out
}

/// Volumes and mounts every master and worker pod has: Secret-backed
/// options as read-only files, and the host paths / claims of the mounts.
fn data_volumes(ds: &Dataset, rt: &CacheRuntime) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (secret, keys) in secrets(ds) {
        let vol = format!("secret-{secret}");
        volumes.push(json!({
            "name": vol,
            "secret": {
                "secretName": secret,
                "defaultMode": 0o400,
                "items": keys.iter().map(|k| json!({"key": k, "path": k})).collect::<Vec<_>>(),
            }
        }));
        mounts.push(
            json!({"name": vol, "mountPath": format!("{SECRETS_DIR}/{secret}"), "readOnly": true}),
        );
    }
    for (i, (m, volume)) in mounts_with_volumes(ds, rt)?.into_iter().enumerate() {
        let vol = format!("ufs-{i}");
        match volume {
            None => continue,
            Some(UfsVolume::HostPath(path)) => {
                volumes.push(json!({"name": vol, "hostPath": {"path": path, "type": "Directory"}}))
            }
            Some(UfsVolume::Claim(claim)) => volumes.push(json!({
                "name": vol,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": m.read_only}
            })),
        }
        mounts.push(
            json!({"name": vol, "mountPath": format!("{UFS_DIR}/{i}"), "readOnly": m.read_only}),
        );
    }
    Ok((volumes, mounts))
}

fn owner(rt: &CacheRuntime) -> OwnerReference {
    rt.controller_owner_ref(&())
        .expect("a stored CacheRuntime has a uid")
}

fn meta(names: &RuntimeNames, name: String, component: &str, rt: &CacheRuntime) -> Value {
    json!({
        "name": name,
        "namespace": names.namespace,
        "labels": names.labels(component),
        "ownerReferences": [owner(rt)],
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("rendered objects match their API types")
}

fn names_of(rt: &CacheRuntime) -> RuntimeNames {
    RuntimeNames::new(&rt.namespace().unwrap_or_default(), &rt.name_any())
}

/// `host:port` of every master, by their stable DNS names.
pub fn master_addresses(rt: &CacheRuntime, cfg: &RenderConfig) -> Vec<String> {
    let names = names_of(rt);
    (0..rt.spec.master.replicas.max(1))
        .map(|i| {
            format!(
                "{}:{MASTER_PORT}",
                names.master_host(i, &cfg.cluster_domain)
            )
        })
        .collect()
}

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

/// The tiers of a worker as `weir worker --tier` takes them, and the
/// volumes behind them.
fn tiers(rt: &CacheRuntime) -> Result<(Vec<String>, Vec<Value>, Vec<Value>)> {
    let mut specs = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, level) in rt.spec.tieredstore.levels.iter().enumerate() {
        let field = format!("spec.tieredstore.levels[{i}]");
        let quota = quantity::bytes(&level.quota)
            .filter(|q| *q > 0)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{field}.quota {:?} is not a positive quantity",
                    level.quota
                ))
            })?;
        if level.high <= level.low {
            return Err(Error::Invalid(format!(
                "{field}.high must be greater than low"
            )));
        }
        let medium = match level.mediumtype {
            MediumType::Mem => "MEM",
            MediumType::Ssd => "SSD",
            MediumType::Hdd => "HDD",
        };
        let host_dirs: Vec<String> = level
            .path
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let mut dirs = Vec::new();
        match level.volume_type {
            VolumeType::HostPath => {
                if host_dirs.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{field}.path is required for hostPath"
                    )));
                }
                for (j, host) in host_dirs.iter().enumerate() {
                    let vol = format!("tier-{i}-{j}");
                    let dir = format!("/var/lib/weir/tier/{i}/{j}");
                    // Each worker pod has a directory of its own below the
                    // host path, named by its namespace and pod name.
                    volumes.push(json!({"name": vol, "hostPath": {"path": host, "type": "DirectoryOrCreate"}}));
                    mounts.push(json!({"name": vol, "mountPath": dir, "subPathExpr": "$(POD_NAMESPACE)-$(POD_NAME)"}));
                    dirs.push(dir);
                }
            }
            VolumeType::EmptyDir => {
                let vol = format!("tier-{i}");
                let dir = format!("/var/lib/weir/tier/{i}");
                let mut empty = json!({"sizeLimit": level.quota});
                if level.mediumtype == MediumType::Mem {
                    empty["medium"] = json!("Memory");
                }
                volumes.push(json!({"name": vol, "emptyDir": empty}));
                mounts.push(json!({"name": vol, "mountPath": dir}));
                dirs.push(dir);
            }
            VolumeType::Ephemeral => {
                let vol = format!("tier-{i}");
                let dir = format!("/var/lib/weir/tier/{i}");
                let mut claim = json!({
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": level.quota}},
                });
                if let Some(class) = host_dirs.first() {
                    claim["storageClassName"] = json!(class);
                }
                volumes.push(
                    json!({"name": vol, "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}),
                );
                mounts.push(json!({"name": vol, "mountPath": dir}));
                dirs.push(dir);
            }
        }
        specs.push(format!(
            "{medium}:{}:{quota}:{}:{}",
            dirs.join(","),
            level.high,
            level.low
        ));
    }
    Ok((specs, volumes, mounts))
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
    master.insert("listen".into(), json!(format!("0.0.0.0:{MASTER_PORT}")));
    master.insert("data_dir".into(), json!("/var/lib/weir/master"));
    let (tier_specs, ..) = tiers(rt)?;
    let mut worker = option_values(&rt.spec.worker.options);
    worker.insert("masters".into(), json!(master_addresses(rt, cfg)));
    worker.insert(
        "data_listen".into(),
        json!(format!("0.0.0.0:{WORKER_DATA_PORT}")),
    );
    worker.insert(
        "http_listen".into(),
        json!(format!("0.0.0.0:{WORKER_HTTP_PORT}")),
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

/// The headless Service that gives masters stable names for Raft (also
/// before they are ready: a new group must find its peers to elect).
pub fn master_service(rt: &CacheRuntime) -> Service {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&names, names.master(), "master", rt),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": names.labels("master"),
            "ports": [{"name": "rpc", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        }
    }))
}

/// The Service clients use; any ready master redirects to the leader.
pub fn client_service(rt: &CacheRuntime) -> Service {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&names, names.master_client(), "master", rt),
        "spec": {
            "selector": names.labels("master"),
            "ports": [{"name": "rpc", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        }
    }))
}

fn scheduling(
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

fn network(rt: &CacheRuntime, pod: &mut Value) {
    if rt.spec.network_mode == NetworkMode::HostNetwork {
        pod["hostNetwork"] = json!(true);
        pod["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
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
    let mut pod = json!({
        "containers": [{
            "name": "master",
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "args": ["master", "--config", "/etc/weir/config/master.yaml", "--id-from-hostname"],
            "env": spec.component.env,
            "ports": [{"name": "rpc", "containerPort": MASTER_PORT}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": MASTER_PORT}, "periodSeconds": 2, "failureThreshold": 2},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": MASTER_PORT}, "periodSeconds": 10, "failureThreshold": 6},
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

/// A digest of the rendered config on the pod template, so a config change
/// rolls the pods that read it.
fn config_annotation(ds: &Dataset, rt: &CacheRuntime, cfg: &RenderConfig) -> Result<Value> {
    use std::hash::{Hash, Hasher};
    let cm = config_map(ds, rt, cfg)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cm.data.hash(&mut h);
    Ok(json!({"weir.io/config-hash": format!("{:016x}", h.finish())}))
}

pub fn worker_statefulset(
    ds: &Dataset,
    rt: &CacheRuntime,
    cfg: &RenderConfig,
) -> Result<StatefulSet> {
    let names = names_of(rt);
    let spec = &rt.spec.worker;
    let (mut volumes, mut mounts) = data_volumes(ds, rt)?;
    let (_, tier_volumes, tier_mounts) = tiers(rt)?;
    volumes.extend(tier_volumes);
    mounts.extend(tier_mounts);
    volumes.push(json!({"name": "config", "configMap": {"name": names.config()}}));
    volumes.push(json!({"name": "state", "emptyDir": {}}));
    mounts.push(json!({"name": "config", "mountPath": "/etc/weir/config", "readOnly": true}));
    mounts.push(json!({"name": "state", "mountPath": "/var/lib/weir/worker"}));
    let mut env = vec![
        json!({"name": "WEIR_WORKER_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
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
                {"name": "data", "containerPort": WORKER_DATA_PORT},
                {"name": "http", "containerPort": WORKER_HTTP_PORT},
            ],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": WORKER_HTTP_PORT}, "periodSeconds": 2},
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

/// Fluid's placement: an `Exclusive` dataset's workers share no node with
/// another runtime's workers; `Shared` ones share nodes, except with an
/// exclusive dataset's.
fn placement(ds: &Dataset, names: &RuntimeNames) -> Value {
    let mut expressions = vec![
        json!({"key": "app.kubernetes.io/name", "operator": "In", "values": ["weir"]}),
        json!({"key": "app.kubernetes.io/component", "operator": "In", "values": ["worker"]}),
        json!({"key": "app.kubernetes.io/instance", "operator": "NotIn", "values": [names.name]}),
    ];
    if ds.spec.placement == Placement::Shared {
        expressions
            .push(json!({"key": PLACEMENT_LABEL, "operator": "In", "values": ["Exclusive"]}));
    }
    json!({"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchExpressions": expressions},
        "namespaceSelector": {},
        "topologyKey": "kubernetes.io/hostname",
    }]})
}

/// Where the CSI node plugin (the chart's `--fuse-fd-holder`) holds FUSE
/// pods' `/dev/fuse` descriptors, so a FUSE pod that restarts takes its
/// live mount over and readers only wait.
const FUSE_FD_HOLDER_DIR: &str = "/var/lib/weir/csi";
const FUSE_FD_HOLDER: &str = "/var/lib/weir/csi/fuse-fds.sock";

/// The FUSE client of every node labelled for this runtime. Its mount
/// lives on the host (Bidirectional) where the CSI plugin bind-mounts it
/// into pods; on SIGTERM `weir fuse` unmounts, unless the plugin still
/// holds its descriptor for a staged volume (a restart, not a removal).
pub fn fuse_daemonset(ds: &Dataset, rt: &CacheRuntime, cfg: &RenderConfig) -> DaemonSet {
    let names = names_of(rt);
    let spec = &rt.spec.fuse;
    let mut node_selector = spec.node_selector.clone();
    node_selector.insert(names.fuse_label(), "true".into());
    let masters = master_addresses(rt, cfg).join(",");
    let mut args = vec![
        "fuse".to_owned(),
        "--masters".into(),
        masters,
        "--mount-point".into(),
        names.host_mount_path(),
        "--allow-other".into(),
        "--fd-holder".into(),
        FUSE_FD_HOLDER.into(),
    ];
    if ds.spec.mounts.iter().all(|m| m.read_only) {
        args.push("--read-only".into());
    }
    if let Some(owner) = &ds.spec.owner {
        args.extend([
            "--uid".to_owned(),
            owner.uid.to_string(),
            "--gid".into(),
            owner.gid.to_string(),
        ]);
    }
    args.extend(spec.args.iter().cloned());
    let mut pod = json!({
        "containers": [{
            "name": "fuse",
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "args": args,
            "securityContext": {"privileged": true},
            "resources": spec.resources.clone().unwrap_or_default(),
            "volumeMounts": [{
                "name": "mnt",
                "mountPath": names.host_mount_dir(),
                "mountPropagation": "Bidirectional",
            }, {
                "name": "fd-holder",
                "mountPath": FUSE_FD_HOLDER_DIR,
            }],
            // Ready once the FUSE mount is there, not just its directory.
            "readinessProbe": {"exec": {"command": ["sh", "-c", format!("grep -q ' {} fuse' /proc/self/mounts", names.host_mount_path())]}, "periodSeconds": 2},
        }],
        "volumes": [
            {"name": "mnt", "hostPath": {"path": names.host_mount_dir(), "type": "DirectoryOrCreate"}},
            {"name": "fd-holder", "hostPath": {"path": FUSE_FD_HOLDER_DIR, "type": "DirectoryOrCreate"}},
        ],
        "terminationGracePeriodSeconds": 30,
    });
    merge(&mut pod, scheduling(ds, &node_selector, &[]));
    network(rt, &mut pod);
    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta(&names, names.fuse(), "fuse", rt),
        "spec": {
            "selector": {"matchLabels": names.labels("fuse")},
            // A new image or setting never restarts a FUSE pod under the
            // pods reading through it: it takes effect when the pod next
            // starts (the node's last reader gone, or the pod deleted).
            "updateStrategy": {"type": "OnDelete"},
            "template": {"metadata": {"labels": names.labels("fuse")}, "spec": pod},
        }
    }))
}

fn access_modes(ds: &Dataset) -> Vec<Value> {
    ds.spec.access_modes.iter().map(|m| json!(m)).collect()
}

/// Capacity a PV of a dataset claims: a dataset has no size of its own.
const PV_CAPACITY: &str = "100Pi";

/// The dataset's PV: cluster scoped, so it cannot be owned by the runtime
/// and is removed by the runtime's finalizer instead.
pub fn persistent_volume(ds: &Dataset, rt: &CacheRuntime) -> PersistentVolume {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": names.pv(), "labels": names.labels("volume")},
        "spec": {
            "capacity": {"storage": PV_CAPACITY},
            "accessModes": access_modes(ds),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "weir",
            "claimRef": {"namespace": names.namespace, "name": names.pvc()},
            "csi": {
                "driver": CSI_DRIVER,
                "volumeHandle": names.pv(),
                "volumeAttributes": {
                    "runtimeName": names.name,
                    "runtimeNamespace": names.namespace,
                    "mountPath": names.host_mount_path(),
                    "fuseLabel": names.fuse_label(),
                    "cleanPolicy": match rt.spec.fuse.clean_policy {
                        crate::crd::runtime::CleanPolicy::OnDemand => "OnDemand",
                        crate::crd::runtime::CleanPolicy::OnRuntimeDeleted => "OnRuntimeDeleted",
                    },
                },
            },
        }
    }))
}

pub fn persistent_volume_claim(ds: &Dataset, rt: &CacheRuntime) -> PersistentVolumeClaim {
    let names = names_of(rt);
    typed(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(&names, names.pvc(), "volume", rt),
        "spec": {
            "accessModes": access_modes(ds),
            "storageClassName": "weir",
            "volumeName": names.pv(),
            "resources": {"requests": {"storage": PV_CAPACITY}},
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::dataset::{DatasetSpec, EncryptValueSource, SecretKeyRef};
    use crate::crd::runtime::{CacheRuntimeSpec, Level, TieredStore};

    pub fn pair() -> (Dataset, CacheRuntime, RenderConfig) {
        let mut ds = Dataset::new(
            "imagenet",
            DatasetSpec {
                mounts: vec![
                    Mount {
                        mount_point: "s3://bucket/train".into(),
                        options: [("endpoint".to_owned(), "http://s3:9000".to_owned())].into(),
                        encrypt_options: vec![EncryptOption {
                            name: "secretAccessKey".into(),
                            value_from: EncryptValueSource {
                                secret_key_ref: SecretKeyRef {
                                    name: "s3-creds".into(),
                                    key: "secret".into(),
                                },
                            },
                        }],
                        ..Default::default()
                    },
                    Mount {
                        mount_point: "local:///data/labels".into(),
                        read_only: true,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        );
        ds.metadata.namespace = Some("team".into());
        let mut rt = CacheRuntime::new(
            "imagenet",
            CacheRuntimeSpec {
                replicas: 2,
                tieredstore: TieredStore {
                    levels: vec![Level {
                        quota: "2Gi".into(),
                        high: 0.9,
                        low: 0.7,
                        ..Default::default()
                    }],
                },
                ..Default::default()
            },
        );
        rt.metadata.namespace = Some("team".into());
        rt.metadata.uid = Some("uid-1".into());
        rt.spec.master.replicas = 3;
        let cfg = RenderConfig {
            image: "weir.io/weir:dev".into(),
            image_pull_policy: "Never".into(),
            cluster_domain: "cluster.local".into(),
        };
        (ds, rt, cfg)
    }

    #[test]
    fn mounts_get_paths_uris_and_credential_files_not_values() {
        let (ds, rt, _) = pair();
        let m = desired_mounts(&ds, &rt).unwrap();
        assert_eq!(m[0].path, "/train");
        assert_eq!(m[0].ufs_uri, "s3://bucket/train");
        assert_eq!(
            m[0].write_type,
            WriteType::CacheThrough,
            "CACHE_THROUGH by default"
        );
        assert_eq!(
            m[0].credential_files["secretAccessKey"],
            "/etc/weir/secrets/s3-creds/secret"
        );
        assert_eq!(m[1].path, "/labels");
        assert_eq!(m[1].ufs_uri, "local:///mnt/weir-ufs/1");
        assert!(m[1].read_only);
    }

    #[test]
    fn bad_mounts_are_named() {
        let (mut ds, rt, _) = pair();
        ds.spec.mounts[1].name = Some("train".into());
        let e = desired_mounts(&ds, &rt).unwrap_err().to_string();
        assert!(e.contains("spec.mounts[1]") && e.contains("/train"), "{e}");
        let (mut ds, rt, _) = pair();
        ds.spec.mounts[0]
            .options
            .insert("writeType".into(), "SOMETIMES".into());
        let e = desired_mounts(&ds, &rt).unwrap_err().to_string();
        assert!(e.contains("spec.mounts[0].options.writeType"), "{e}");
        let (mut ds, rt, _) = pair();
        ds.spec.mounts[0].path = Some("/".into());
        assert!(
            desired_mounts(&ds, &rt)
                .unwrap_err()
                .to_string()
                .contains("spec.mounts[0].path")
        );
    }

    #[test]
    fn config_map_names_peers_and_tiers_and_holds_no_secret() {
        let (ds, rt, cfg) = pair();
        let cm = config_map(&ds, &rt, &cfg).unwrap();
        let data = cm.data.unwrap();
        let master = &data["master.yaml"];
        assert!(
            master.contains("2=imagenet-master-2.imagenet-master.team.svc.cluster.local:19200"),
            "{master}"
        );
        let worker = &data["worker.yaml"];
        assert!(
            worker.contains(&format!("MEM:/var/lib/weir/tier/0:{}:0.9:0.7", 2u64 << 30)),
            "{worker}"
        );
        assert!(!master.contains("s3-creds") && !worker.contains("s3-creds"));
    }

    #[test]
    fn pods_mount_secrets_as_files_and_tiers_as_volumes() {
        let (ds, rt, cfg) = pair();
        let sts = worker_statefulset(&ds, &rt, &cfg).unwrap();
        let text = serde_json::to_string(&sts).unwrap();
        assert!(text.contains(r#""secretName":"s3-creds""#));
        assert!(text.contains(r#""medium":"Memory""#));
        assert!(text.contains(r#""path":"/data/labels""#));
        assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
        let master = master_statefulset(&ds, &rt, &cfg).unwrap();
        assert_eq!(master.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(
            master.metadata.owner_references.unwrap()[0].kind,
            "CacheRuntime"
        );
    }

    #[test]
    fn fuse_runs_on_labelled_nodes_and_the_pv_names_the_host_mount() {
        let (ds, rt, cfg) = pair();
        let ds_fuse = fuse_daemonset(&ds, &rt, &cfg);
        let fuse_spec = ds_fuse.spec.unwrap();
        assert_eq!(
            fuse_spec.update_strategy.and_then(|u| u.type_).as_deref(),
            Some("OnDelete"),
            "an upgrade must not restart FUSE under readers"
        );
        let pod = fuse_spec.template.spec.unwrap();
        let sel = pod.node_selector.clone().unwrap();
        assert_eq!(sel["weir.io/fuse-team-imagenet"], "true");
        let args = pod.containers[0].args.clone().unwrap();
        let holder = args.iter().position(|a| a == "--fd-holder").unwrap();
        assert_eq!(
            args[holder + 1],
            FUSE_FD_HOLDER,
            "the chart's CSI plugin holds it"
        );
        assert!(FUSE_FD_HOLDER.starts_with(FUSE_FD_HOLDER_DIR));
        let host_dirs: Vec<String> = pod
            .volumes
            .unwrap()
            .iter()
            .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
            .collect();
        assert!(host_dirs.contains(&FUSE_FD_HOLDER_DIR.to_owned()));
        let pv = persistent_volume(&ds, &rt);
        let csi = pv.spec.unwrap().csi.unwrap();
        assert_eq!(csi.driver, "csi.weir.io");
        assert_eq!(
            csi.volume_attributes.unwrap()["mountPath"],
            "/var/lib/weir/mnt/team/imagenet/fuse"
        );
        let pvc = persistent_volume_claim(&ds, &rt);
        assert_eq!(
            pvc.spec.unwrap().volume_name.as_deref(),
            Some("team-imagenet")
        );
    }

    #[test]
    fn placement_keeps_exclusive_caches_apart_and_owner_reaches_fuse() {
        let (mut ds, rt, cfg) = pair();
        let text = |ds: &Dataset| {
            serde_json::to_string(&worker_statefulset(ds, &rt, &cfg).unwrap()).unwrap()
        };
        let exclusive = text(&ds);
        assert!(exclusive.contains(r#""weir.io/placement":"Exclusive""#));
        assert!(exclusive.contains(r#""operator":"NotIn","values":["imagenet"]"#));
        ds.spec.placement = Placement::Shared;
        let shared = text(&ds);
        assert!(
            shared.contains(r#""key":"weir.io/placement","operator":"In","values":["Exclusive"]"#)
        );
        ds.spec.owner = Some(crate::crd::dataset::Owner {
            uid: 1000,
            gid: 100,
        });
        let args = fuse_daemonset(&ds, &rt, &cfg)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            args.windows(2).any(|w| w == ["--uid", "1000"])
                && args.windows(2).any(|w| w == ["--gid", "100"]),
            "{args:?}"
        );
    }

    #[test]
    fn a_bad_tier_is_named() {
        let (ds, mut rt, cfg) = pair();
        rt.spec.tieredstore.levels[0].quota = "lots".into();
        let e = config_map(&ds, &rt, &cfg).unwrap_err().to_string();
        assert!(e.contains("spec.tieredstore.levels[0].quota"), "{e}");
    }
}
