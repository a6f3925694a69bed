//! The CSI node plugin on the real cluster: pods mount a dataset's PVC and
//! read through the runtime's FUSE pod; two pods share one FUSE mount; a
//! read-only volume refuses writes; a killed FUSE pod's mounts come back in
//! the same app pod.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use weir_e2e::weir::{BridgeS3, OperatorProcess, bytes};
use weir_e2e::{TestNamespace, in_namespace, install_crd, wait_for};
use weir_operator::crd::dataset::DatasetPhase;
use weir_operator::crd::{CacheRuntime, DataLoad, Dataset};

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

async fn apply(ns: &TestNamespace, obj: Value) -> anyhow::Result<()> {
    let gvk: kube::core::GroupVersionKind = serde_json::from_value(json!({
        "group": obj["apiVersion"].as_str().unwrap_or_default().split_once('/').map(|(g, _)| g).unwrap_or(""),
        "version": obj["apiVersion"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default(),
        "kind": obj["kind"],
    }))?;
    let (resource, caps) = kube::discovery::pinned_kind(&ns.client, &gvk).await?;
    let api: Api<kube::api::DynamicObject> = if caps.scope == kube::discovery::Scope::Cluster {
        Api::all_with(ns.client.clone(), &resource)
    } else {
        Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
    };
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply("weir-e2e").force(),
        &Patch::Apply(&obj),
    )
    .await?;
    Ok(())
}

/// The plugin as a DaemonSet of the Weir image, registering itself with
/// the kubelet, with the RBAC it needs to label nodes.
async fn deploy_plugin(ns: &TestNamespace) -> anyhow::Result<()> {
    let role = format!("weir-csi-{}", ns.name);
    apply(ns, json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": "csi.weir.io"},
        "spec": {"attachRequired": false, "podInfoOnMount": false, "volumeLifecycleModes": ["Persistent"]}})).await?;
    apply(
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "weir-csi"}}),
    )
    .await?;
    apply(
        ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]}),
    )
    .await?;
    apply(
        ns,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "weir-csi", "namespace": ns.name}]}),
    )
    .await?;
    let host = |name: &str, path: &str, kind: &str| json!({"name": name, "hostPath": {"path": path, "type": kind}});
    apply(ns, json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "weir-csi"},
        "spec": {
            "selector": {"matchLabels": {"app": "weir-csi"}},
            "template": {
                "metadata": {"labels": {"app": "weir-csi"}},
                "spec": {
                    "serviceAccountName": "weir-csi",
                    "containers": [{
                        "name": "plugin",
                        "image": "weir.io/weir:dev",
                        "imagePullPolicy": "Never",
                        "command": ["/usr/local/bin/weir-csi"],
                        "args": ["--endpoint", "unix:///plugin/csi.sock",
                            "--state-file", "/var/lib/weir/csi/state.json"],
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                {"name": "RUST_LOG", "value": "info"}],
                        "securityContext": {"privileged": true},
                        "volumeMounts": [
                            {"name": "plugin", "mountPath": "/plugin"},
                            {"name": "kubelet", "mountPath": "/var/lib/kubelet", "mountPropagation": "Bidirectional"},
                            {"name": "weir", "mountPath": "/var/lib/weir", "mountPropagation": "Bidirectional"},
                        ],
                    }, {
                        "name": "registrar",
                        "image": "weir.io/weir:dev",
                        "imagePullPolicy": "Never",
                        "command": ["/usr/local/bin/weir-csi-registrar"],
                        "args": ["--kubelet-endpoint", "/var/lib/kubelet/plugins/csi.weir.io/csi.sock",
                            "--registration-dir", "/registration"],
                        "volumeMounts": [{"name": "registration", "mountPath": "/registration"}],
                    }],
                    "terminationGracePeriodSeconds": 5,
                    "volumes": [
                        host("plugin", "/var/lib/kubelet/plugins/csi.weir.io", "DirectoryOrCreate"),
                        host("registration", "/var/lib/kubelet/plugins_registry", "Directory"),
                        host("kubelet", "/var/lib/kubelet", "Directory"),
                        host("weir", "/var/lib/weir", "DirectoryOrCreate"),
                    ],
                }
            }
        }})).await?;
    Ok(())
}

/// The CSI node plugin's pod reports itself registered with the kubelet.
async fn wait_registered(ns: &TestNamespace) -> anyhow::Result<()> {
    let nodes: Api<k8s_openapi::api::storage::v1::CSINode> = Api::all(ns.client.clone());
    wait_for(
        "csi.weir.io registered with the kubelet",
        Duration::from_secs(120),
        || async {
            let all = nodes.list(&ListParams::default()).await?;
            let registered = all
                .items
                .iter()
                .any(|n| n.spec.drivers.iter().any(|d| d.name == "csi.weir.io"));
            Ok(registered.then_some(()))
        },
    )
    .await?;
    Ok(())
}

fn app_pod(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "reader"}},
        "spec": {
            "containers": [{"name": "app", "image": "weir.io/e2e:dev", "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                // Mounts the plugin repairs on the host reach the container.
                "volumeMounts": [{"name": "data", "mountPath": "/data", "mountPropagation": "HostToContainer"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}],
            "terminationGracePeriodSeconds": 0,
        }
    }))
    .expect("pod literal")
}

async fn wait_running(ns: &TestNamespace, pod: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = ns.api();
    wait_for(
        &format!("pod {pod} running"),
        Duration::from_secs(180),
        || async {
            let p = pods.get(pod).await?;
            let running = p.status.and_then(|s| s.phase).as_deref() == Some("Running");
            Ok(running.then_some(()))
        },
    )
    .await?;
    Ok(())
}

fn sha_in(ns: &TestNamespace, pod: &str, path: &str) -> Option<String> {
    let out = ns.kubectl(&["exec", pod, "--", "sha256sum", path]).ok()?;
    out.split_whitespace().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_read_datasets_through_csi_and_survive_fuse_restarts() -> anyhow::Result<()> {
    in_namespace("csi", async |ns| {
        for crd in [Dataset::crd(), CacheRuntime::crd(), DataLoad::crd()] {
            install_crd(&ns.client, &crd).await?;
        }
        deploy_plugin(ns).await?;
        let s3 = BridgeS3::start("csi")?;
        let file = bytes(12 << 20, 7);
        s3.put("data/a.bin", &file)?;
        ns.kubectl(&["create", "secret", "generic", "s3-creds", "--from-literal=accessKeyId=k", "--from-literal=secretAccessKey=s"])?;
        let _op = OperatorProcess::start(&ns.bed, &ns.name, "op-csi")?;
        let name = "shared";
        let ds: Dataset = serde_json::from_value(json!({
            "apiVersion": "data.weir.io/v1alpha1", "kind": "Dataset", "metadata": {"name": name},
            "spec": {"placement": "Shared", "mounts": [{"mountPoint": format!("s3://{}/data", s3.bucket), "name": "data",
                "options": {"endpoint": s3.endpoint},
                "encryptOptions": [
                    {"name": "accessKeyId", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "accessKeyId"}}},
                    {"name": "secretAccessKey", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secretAccessKey"}}},
                ]}]}
        }))?;
        let rt: CacheRuntime = serde_json::from_value(json!({
            "apiVersion": "data.weir.io/v1alpha1", "kind": "CacheRuntime", "metadata": {"name": name},
            "spec": {"replicas": 1, "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "128Mi"}]}}
        }))?;
        let pp = PostParams::default();
        ns.api::<Dataset>().create(&pp, &ds).await?;
        ns.api::<CacheRuntime>().create(&pp, &rt).await?;
        let datasets: Api<Dataset> = ns.api();
        wait_for("Dataset Bound", Duration::from_secs(240), || async {
            let ds = datasets.get(name).await?;
            Ok(ds.status.is_some_and(|s| s.phase == DatasetPhase::Bound).then_some(()))
        })
        .await?;
        wait_registered(ns).await?;

        // Two pods on the node read the data through one FUSE mount.
        let pods: Api<Pod> = ns.api();
        pods.create(&pp, &app_pod("app-1", name)).await?;
        pods.create(&pp, &app_pod("app-2", name)).await?;
        wait_running(ns, "app-1").await?;
        wait_running(ns, "app-2").await?;
        let want = sha256_hex(&file);
        for pod in ["app-1", "app-2"] {
            let listing = ns.kubectl(&["exec", pod, "--", "ls", "-lR", "/data"]);
            let read = ns.kubectl(&["exec", pod, "--", "sha256sum", "/data/data/a.bin"]);
            assert_eq!(sha_in(ns, pod, "/data/data/a.bin").as_deref(), Some(want.as_str()), "{pod} reads the bytes in S3: {listing:?} {read:?}");
        }
        let fuse_pods = || async {
            let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=fuse")).await?;
            Ok::<_, weir_e2e::Error>(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect::<Vec<_>>())
        };
        assert_eq!(fuse_pods().await?.len(), 1, "one FUSE pod serves both");
        let write = ns.kubectl(&["exec", "app-1", "--", "sh", "-c", "echo x > /data/data/new.txt"]);
        let refused = write.expect_err("a read-only volume refuses writes").to_string();
        assert!(refused.contains("Read-only file system"), "{refused}");

        // Kill the FUSE pod: the same app pod reads again within 15 s.
        let fuse_pod = fuse_pods().await?.remove(0).name_any();
        pods.delete(&fuse_pod, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
        let killed = Instant::now();
        wait_for("app-1 reads again after the FUSE pod was killed", Duration::from_secs(60), || async {
            Ok((sha_in(ns, "app-1", "/data/data/a.bin").as_deref() == Some(want.as_str())).then_some(()))
        })
        .await?;
        let back = killed.elapsed();
        eprintln!("reads work again {back:.1?} after the FUSE pod was killed");
        assert!(back < Duration::from_secs(15), "recovery took {back:?}");
        let restarts = pods.get("app-1").await?.status.and_then(|s| s.container_statuses).map(|c| c[0].restart_count);
        assert_eq!(restarts, Some(0), "the app pod was not restarted");

        let _ = ns.bed.kubectl(&["delete", "clusterrole,clusterrolebinding", &format!("weir-csi-{}", ns.name)]);
        Ok(())
    })
    .await
}
