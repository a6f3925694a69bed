//! Weir on a cluster that tenants share, installed with the chart in a
//! namespace of the longest name Kubernetes allows: a `local:///etc` mount is
//! refused (condition and Event naming the field, no pod made) while a
//! directory under the chart's `allowedHostPaths` binds and reaches masters
//! and workers read-only; a pod that meets the `restricted` Pod Security
//! profile, running as uid 65534, reads an S3 dataset and a local one
//! through the PVC, with modes no wider than the source's, and links
//! planted in the source resolve in the pod, never in a worker; and a Dataset
//! whose name is 63 characters long is bound, read and deleted with nothing
//! left behind and no finalizer removed by hand.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_e2e::cache::events_of;
use weir_e2e::weir::{BridgeS3, HelmRelease, bytes};
use weir_e2e::{TestNamespace, in_namespace_of_length, install_crd, wait_for};
use weir_operator::crd::dataset::DatasetPhase;
use weir_operator::crd::{CacheRuntime, Dataset};
use weir_operator::names::RuntimeNames;

/// The prefix the chart grants in this test; datasets live below it.
const GRANTED: &str = "/var/lib/weir-e2e-granted";

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

fn dataset(name: &str, mounts: Value) -> anyhow::Result<Dataset> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": "Dataset", "metadata": {"name": name},
        "spec": {"mounts": mounts}
    }))?)
}

fn runtime(name: &str) -> anyhow::Result<CacheRuntime> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": "CacheRuntime", "metadata": {"name": name},
        "spec": {"replicas": 1, "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "64Mi"}]}}
    }))?)
}

/// A pod that the `restricted` profile admits: not root, no privilege
/// escalation, no capabilities, the runtime's seccomp profile.
fn restricted_pod(name: &str, claim: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "weir.io/e2e:dev", "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}],
            "terminationGracePeriodSeconds": 0,
        }
    })
}

const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const LINKS: [(&str, &str); 2] = [
    ("token", TOKEN),
    ("credential", "/etc/weir/secrets/s3-creds/secretAccessKey"),
];

/// The source directory of the local dataset: files of several modes.
struct LocalSource {
    dir: PathBuf,
}

impl LocalSource {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("sub"))?;
        let files: [(&str, Vec<u8>, u32); 4] = [
            ("open.txt", b"readable by anyone\n".to_vec(), 0o644),
            ("frozen.txt", b"read-only for everyone\n".to_vec(), 0o444),
            ("secret.txt", b"root only\n".to_vec(), 0o600),
            ("sub/blob.bin", bytes(3 << 20, 11), 0o640),
        ];
        for (name, body, mode) in files {
            let path = dir.join(name);
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        // Group-readable, so the group of blob.bin (root) could read it.
        std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o750))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        // Links a tenant could plant in a granted directory, aimed at what
        // a worker's container holds: its service-account token, and the
        // credential file of the dataset's S3 mount.
        for (name, target) in LINKS {
            std::os::unix::fs::symlink(target, dir.join(name))?;
        }
        Ok(Self { dir: dir.into() })
    }
}

impl Drop for LocalSource {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `script` in `pod` with `sh -c`; its stdout, or the failure text.
fn sh(ns: &TestNamespace, pod: &str, script: &str) -> Result<String, String> {
    ns.kubectl(&["exec", pod, "--", "sh", "-c", script])
        .map_err(|e| e.to_string())
}

/// `local:///etc` is refused before any pod exists, on the objects the
/// user looks at; deleting the refused pair does not hang.
async fn ungranted_host_path_is_refused(ns: &TestNamespace) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let datasets: Api<Dataset> = ns.api();
    datasets
        .create(
            &pp,
            &dataset(
                "etc",
                json!([{"mountPoint": "local:///etc", "readOnly": true}]),
            )?,
        )
        .await?;
    ns.api::<CacheRuntime>()
        .create(&pp, &runtime("etc")?)
        .await?;
    let message = wait_for(
        "the etc Dataset refused",
        Duration::from_secs(60),
        || async {
            let status = datasets.get("etc").await?.status.unwrap_or_default();
            let refused = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.reason == "HostPathNotAllowed")
                .map(|c| c.message.clone());
            Ok(refused.filter(|_| status.phase == DatasetPhase::Failed))
        },
    )
    .await?;
    assert!(
        message.starts_with("spec.mounts[0].mountPoint: host path /etc is not under"),
        "{message}"
    );
    let events = wait_for(
        "a HostPathNotAllowed Event on the Dataset",
        Duration::from_secs(30),
        || async {
            let events = events_of(ns, "etc");
            Ok(events
                .lines()
                .any(|l| {
                    l.starts_with("Dataset")
                        && l.contains("HostPathNotAllowed")
                        && l.contains("spec.mounts[0].mountPoint")
                })
                .then_some(events))
        },
    )
    .await?;
    eprintln!("refused local:///etc:\n{events}");
    let names = RuntimeNames::new(&ns.name, "etc");
    let pods: Api<Pod> = ns.api();
    let made = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=etc"))
        .await?;
    assert!(made.items.is_empty(), "no pod for a refused host path");
    let sets: Api<StatefulSet> = ns.api();
    assert!(sets.get_opt(&names.master()).await?.is_none());
    datasets.delete("etc", &DeleteParams::default()).await?;
    wait_for(
        "the refused pair deleted",
        Duration::from_secs(60),
        || async {
            let gone = datasets.get_opt("etc").await?.is_none()
                && ns.api::<CacheRuntime>().get_opt("etc").await?.is_none();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// The pod spec meets the `restricted` profile: a server-side dry run in a
/// namespace that enforces it admits it.
async fn admitted_as_restricted(ns: &TestNamespace, pod: &Value) -> anyhow::Result<()> {
    let name = format!("e2e-restricted-{}", std::process::id() % 100_000);
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    let object: Namespace = serde_json::from_value(json!({"metadata": {"name": name,
        "labels": {"weir.io/e2e": "true", "pod-security.kubernetes.io/enforce": "restricted"}}}))?;
    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    wait_for(
        "the dry-run namespace free",
        Duration::from_secs(60),
        || async { Ok(namespaces.get_opt(&name).await?.is_none().then_some(())) },
    )
    .await?;
    namespaces.create(&PostParams::default(), &object).await?;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &name);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let admitted = pods
        .create(&dry, &serde_json::from_value(pod.clone())?)
        .await;
    let mut root = pod.clone();
    root["spec"]["securityContext"] = json!({});
    let refused = pods.create(&dry, &serde_json::from_value(root)?).await;
    namespaces.delete(&name, &DeleteParams::default()).await?;
    admitted?;
    let refused = refused
        .expect_err("the profile is enforced: a pod that may run as root is refused")
        .to_string();
    assert!(refused.contains("restricted"), "{refused}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_a_cluster_safely() -> anyhow::Result<()> {
    in_namespace_of_length("shared", Some(63), async |ns| {
        assert_eq!(ns.name.len(), 63, "{}", ns.name);
        for crd in weir_operator::crd::all() {
            install_crd(&ns.client, &crd).await?;
        }
        let grant = format!("allowedHostPaths={{{GRANTED}}}");
        let _release = HelmRelease::install(&ns.bed, &ns.name, &[&grant])?;
        ungranted_host_path_is_refused(ns).await?;

        // A 63-character Dataset: an S3 mount and a granted local one.
        let source = LocalSource::create(&Path::new(GRANTED).join(format!("shared-{}", std::process::id())))?;
        let s3 = BridgeS3::start("shared")?;
        let object = bytes(5 << 20, 3);
        s3.put("data/part-0.bin", &object)?;
        ns.kubectl(&["create", "secret", "generic", "s3-creds", "--from-literal=accessKeyId=k", "--from-literal=secretAccessKey=s"])?;
        let name = format!("tenant-{}", "n".repeat(56));
        assert_eq!(name.len(), 63);
        let credentials = json!([
            {"name": "accessKeyId", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "accessKeyId"}}},
            {"name": "secretAccessKey", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secretAccessKey"}}},
        ]);
        let pp = PostParams::default();
        let ds = dataset(&name, json!([
            {"mountPoint": format!("s3://{}/data", s3.bucket), "name": "s3", "readOnly": true,
             "options": {"endpoint": s3.endpoint}, "encryptOptions": credentials},
            {"mountPoint": format!("local://{}", source.dir.display()), "name": "local", "readOnly": true},
        ]))?;
        let datasets: Api<Dataset> = ns.api();
        datasets.create(&pp, &ds).await?;
        ns.api::<CacheRuntime>().create(&pp, &runtime(&name)?).await?;
        wait_for("the 63-character Dataset Bound", Duration::from_secs(240), || async {
            let ds = datasets.get(&name).await?;
            Ok(ds.status.is_some_and(|s| s.phase == DatasetPhase::Bound).then_some(()))
        })
        .await?;

        // The granted directory reaches masters and workers read-only.
        let names = RuntimeNames::new(&ns.name, &name);
        let sets: Api<StatefulSet> = ns.api();
        for set in [names.master(), names.worker()] {
            assert!(set.len() <= 52, "{set}");
            let pod = sets.get(&set).await?.spec.map(|s| s.template).and_then(|t| t.spec).expect("a pod template");
            let host_volumes: Vec<String> = pod.volumes.iter().flatten().filter(|v| v.host_path.is_some()).map(|v| v.name.clone()).collect();
            assert_eq!(host_volumes.len(), 1, "{set}: {host_volumes:?}");
            let mount = pod.containers[0].volume_mounts.iter().flatten().find(|m| m.name == host_volumes[0]).expect("the host path is mounted");
            assert_eq!(mount.read_only, Some(true), "{set}: {mount:?}");
        }

        // A restricted pod as uid 65534 reads through the PVC.
        let app = restricted_pod("reader", &name);
        admitted_as_restricted(ns, &app).await?;
        let pods: Api<Pod> = ns.api();
        pods.create(&pp, &serde_json::from_value(app)?).await?;
        wait_for("the restricted pod running", Duration::from_secs(180), || async {
            let p = pods.get("reader").await?;
            Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        })
        .await?;
        assert_eq!(sh(ns, "reader", "id -u").map(|s| s.trim().to_owned()), Ok("65534".to_owned()));
        let listing = sh(ns, "reader", "ls -lR /data 2>&1; true").unwrap_or_else(|e| e);
        eprintln!("what uid 65534 sees:\n{listing}");
        let sha = |path: &str| sh(ns, "reader", &format!("sha256sum {path}")).map(|s| s.split_whitespace().next().unwrap_or_default().to_owned());
        assert_eq!(sha("/data/s3/part-0.bin"), Ok(sha256_hex(&object)), "{listing}");
        for file in ["open.txt", "frozen.txt"] {
            let want = sha256_hex(&std::fs::read(source.dir.join(file))?);
            assert_eq!(sha(&format!("/data/local/{file}")), Ok(want), "{file}: {listing}");
        }
        for denied in ["/data/local/secret.txt", "/data/local/sub/blob.bin"] {
            let err = sh(ns, "reader", &format!("cat {denied}")).expect_err("a mode that denies others is kept");
            assert!(err.contains("Permission denied"), "{denied}: {err}");
        }
        // Modes as the source has them, never wider.
        let shown = sh(ns, "reader", "cd /data && stat -c '%a %n' s3 s3/part-0.bin local local/open.txt local/frozen.txt local/secret.txt local/sub")
            .map_err(anyhow::Error::msg)?;
        let want = ["755 s3", "644 s3/part-0.bin", "755 local", "644 local/open.txt", "444 local/frozen.txt", "600 local/secret.txt", "750 local/sub"];
        assert_eq!(shown.lines().collect::<Vec<_>>(), want, "{listing}");
        // Links are links: the pod's own kernel resolves them in the pod,
        // so one aimed at a worker's token reaches the pod's own token, and
        // one aimed at a worker's credential file finds nothing.
        for (name, target) in LINKS {
            assert_eq!(sh(ns, "reader", &format!("readlink /data/local/{name}")).map(|s| s.trim().to_owned()), Ok(target.to_owned()));
        }
        let own = sh(ns, "reader", &format!("cat {TOKEN}")).map_err(anyhow::Error::msg)?;
        assert_eq!(sh(ns, "reader", "cat /data/local/token"), Ok(own), "the link reads the pod's own token");
        let missing = sh(ns, "reader", "cat /data/local/credential").expect_err("no credential file in the pod");
        assert!(missing.contains("No such file"), "{missing}");
        let write = sh(ns, "reader", "echo x > /data/local/new.txt").expect_err("a read-only dataset refuses writes");
        assert!(write.contains("Read-only file system"), "{write}");
        assert!(!source.dir.join("new.txt").exists());

        // Deleted with nothing left, no finalizer touched.
        pods.delete("reader", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
        datasets.delete(&name, &DeleteParams::default()).await?;
        let pvs: Api<PersistentVolume> = Api::all(ns.client.clone());
        let nodes: Api<Node> = Api::all(ns.client.clone());
        let instance = format!("app.kubernetes.io/instance={name}");
        wait_for("the 63-character Dataset gone with all it made", Duration::from_secs(180), || async {
            let left = [
                datasets.get_opt(&name).await?.is_some(),
                ns.api::<CacheRuntime>().get_opt(&name).await?.is_some(),
                pvs.get_opt(&names.pv()).await?.is_some(),
                !nodes.list(&ListParams::default().labels(&names.fuse_label())).await?.items.is_empty(),
                !pods.list(&ListParams::default().labels(&instance)).await?.items.is_empty(),
            ];
            Ok((!left.contains(&true)).then_some(()))
        })
        .await?;
        let events = events_of(ns, &name);
        assert!(events.contains("Deleted"), "{events}");
        assert!(!events.contains("DeletionTimedOut"), "{events}");
        Ok(())
    })
    .await
}
