//! The user journey as a user runs it: `e2e/demo.sh` (what `make demo`
//! runs) in this test's namespace: Helm install, S3 with sample data, the
//! examples, checksums read through the PVC, a DataLoad, 100% cached. Then
//! `helm upgrade` to a new image tag while a pod reads through its open
//! mount, and `helm uninstall` after the CRs are deleted: no node label,
//! PV, mount or Weir object is left.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use weir_e2e::weir::{HelmRelease, NODE_IP, PodReader, free_port};
use weir_e2e::{in_namespace, profile_dir, wait_for};

/// Stops the demo's S3 server even when the test fails half way.
struct S3Pid(std::path::PathBuf);

impl Drop for S3Pid {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("s3.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn millis_after(out: &str, what: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.contains(what))?;
    let (_, rest) = line.split_once("bytes in ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_journey_upgrade_and_uninstall() -> anyhow::Result<()> {
    in_namespace("journey", async |ns| {
        let dir = tempfile::tempdir()?;
        let _s3 = S3Pid(dir.path().to_path_buf());
        let port = free_port(NODE_IP);
        HelmRelease::clear_leftovers(&ns.bed)?;
        // Mounts and staged volumes are looked for on every node.
        let plugin_mounts = || -> anyhow::Result<usize> {
            let table = ns.bed.all_node_mounts()?;
            Ok(table.lines().filter(|l| l.contains("csi.weir.io")).count())
        };
        let mounts_before = plugin_mounts()?;
        let out = Command::new("bash")
            .arg(ns.bed.repo.join("e2e/demo.sh"))
            .env("WEIR_DEMO_NAMESPACE", &ns.name)
            .env("WEIR_RELEASE_NAMESPACE", &ns.name)
            .env("WEIR_WATCH_NAMESPACE", &ns.name)
            .env("WEIR_DEMO_S3_PORT", port.to_string())
            .env("WEIR_DEMO_DIR", dir.path())
            .env("WEIR_PROFILE_DIR", profile_dir())
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        assert!(out.status.success(), "e2e/demo.sh failed");
        for read in ["cold", "warm"] {
            assert!(
                text.contains(&format!(
                    "{read} read through the PVC: 55 files, checksums match the source"
                )),
                "{read} read"
            );
        }
        let (cold, warm) = (
            millis_after(&text, "cold read").unwrap_or_default(),
            millis_after(&text, "warm read").unwrap_or_default(),
        );
        eprintln!("the reader pod: cold {cold} ms, warm {warm} ms (96 MiB + 51 small files)");
        let ds = ns.kubectl(&[
            "get",
            "dataset",
            "demo",
            "-o",
            "jsonpath={.status.phase} {.status.cacheStates.cachedPercentage}",
        ])?;
        assert_eq!(ds, "Bound 100.0%");
        // The release is this namespace's: the test drives it from here on.
        let release = HelmRelease::adopt(&ns.bed, &ns.name);

        // helm upgrade to a new tag while a pod reads through its mount.
        ns.bed
            .run_script("image.sh", &["weir", "weir.io/weir:upgrade"])?;
        let pods: Api<Pod> = ns.api();
        let reader: Pod = serde_json::from_value(json!({
            "metadata": {"name": "long-reader"},
            "spec": {
                "containers": [{"name": "app", "image": "weir.io/e2e:dev", "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "mountPropagation": "HostToContainer"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "demo", "readOnly": true}}],
                "terminationGracePeriodSeconds": 0,
            }
        }))?;
        pods.create(&PostParams::default(), &reader).await?;
        wait_for("the reader pod running", Duration::from_secs(120), || async {
            let p = pods.get("long-reader").await?;
            Ok((p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        })
        .await?;
        let fuse_pods = || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=fuse"))
                .await?;
            Ok::<_, weir_e2e::Error>(list.items.iter().map(|p| p.uid().unwrap_or_default()).collect::<Vec<_>>())
        };
        let fuse_before = fuse_pods().await?;
        let want = std::fs::read_to_string(dir.path().join("source.sha256"))?
            .lines()
            .find(|l| l.ends_with("./shards/part-0.bin"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        let reader = PodReader::start(&ns.bed, &ns.name, "long-reader", "/data/data/shards/part-0.bin", &want);
        release.upgrade_reusing(&["image.tag=upgrade"])?;
        for (kind, name) in [("deployment", "weir-operator"), ("daemonset", "weir-csi")] {
            let image = ns.kubectl(&["get", kind, name, "-o", "jsonpath={.spec.template.spec.containers[0].image}"])?;
            assert_eq!(image, "weir.io/weir:upgrade", "{kind} {name} rolled");
        }
        // Past a reconcile of the new operator: the cache and its FUSE pod
        // stay on the image they were created with.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let reads = reader.stop();
        let failures: Vec<_> = reads.iter().filter(|(_, r)| r.is_err()).collect();
        eprintln!("{} reads through the open mount across the upgrade", reads.len());
        assert!(reads.len() >= 3 && failures.is_empty(), "reads across the upgrade: {failures:?}");
        assert_eq!(fuse_pods().await?, fuse_before, "the FUSE pod was not restarted");
        let restarts = pods.get("long-reader").await?.status.and_then(|s| s.container_statuses).map(|c| c[0].restart_count);
        assert_eq!(restarts, Some(0));
        let worker_image = ns.kubectl(&["get", "statefulset", "demo-worker", "-o", "jsonpath={.spec.template.spec.containers[0].image}"])?;
        assert_eq!(worker_image, "weir.io/weir:dev", "the cache keeps its image");

        // Setting the runtime's image moves the cache (masters and workers
        // roll to it and come back ready; the Dataset stays Bound).
        ns.kubectl(&["patch", "cacheruntime", "demo", "--type=merge", "-p", r#"{"spec":{"image":"weir.io/weir:upgrade"}}"#])?;
        let patched = std::time::Instant::now();
        wait_for("the cache rolled to the runtime's image", Duration::from_secs(180), || async {
            let mut rolled = ns.kubectl(&["get", "cacheruntime", "demo", "-o", "jsonpath={.status.image}"])? == "weir.io/weir:upgrade";
            for sts in ["demo-master", "demo-worker"] {
                let state = ns.kubectl(&[
                    "get",
                    "statefulset",
                    sts,
                    "-o",
                    "jsonpath={.spec.template.spec.containers[0].image} {.status.replicas} {.status.updatedReplicas} {.status.readyReplicas} {.metadata.generation} {.status.observedGeneration}",
                ])?;
                let f: Vec<&str> = state.split(' ').collect();
                // Counted by the controller for this template, not the last.
                rolled &= f.len() == 6 && f[0] == "weir.io/weir:upgrade" && f[1] == f[2] && f[1] == f[3] && f[4] == f[5];
            }
            Ok(rolled.then_some(()))
        })
        .await?;
        eprintln!("the cache rolled to the runtime's new image in {:.1?}", patched.elapsed());
        let phase = ns.kubectl(&["get", "dataset", "demo", "-o", "jsonpath={.status.phase}"])?;
        assert_eq!(phase, "Bound", "the Dataset across the cache's roll");

        // Delete the application pods, and once the kubelet has unmounted
        // their volume through the plugin, the CRs; then uninstall: nothing
        // is left. (A CSI plugin uninstalled before the kubelet unstages
        // leaves the pod mounts behind; the kubelet reports no in-use state
        // for unattached volumes that the operator could wait on.) The
        // cache's own pods go with the CRs: deleted here, their
        // StatefulSets would only bring them back under the same names.
        ns.kubectl(&["delete", "pod", "-l", "app.kubernetes.io/name!=weir", "--wait", "--timeout=120s"])?;
        let handle = format!("\"{}-demo\"", ns.name);
        wait_for("the kubelet to unstage the volume", Duration::from_secs(120), || async {
            let staged = ns.bed.node_names()?.iter().any(|node| {
                std::fs::read_dir(ns.bed.on_node(node, "/var/lib/kubelet/plugins/kubernetes.io/csi/csi.weir.io"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|d| std::fs::read_to_string(d.path().join("vol_data.json")).is_ok_and(|v| v.contains(&handle)))
            });
            Ok((!staged).then_some(()))
        })
        .await?;
        ns.kubectl(&["delete", "dataload,dataset", "--all", "--wait", "--timeout=180s"])?;
        wait_for("the runtime gone", Duration::from_secs(180), || async {
            Ok(ns.kubectl(&["get", "cacheruntimes", "-o", "name"])?.trim().is_empty().then_some(()))
        })
        .await?;
        release.uninstall()?;
        // Pods terminate after `helm uninstall` returns; the Lease goes
        // with its holder's pod.
        let leftovers = || -> weir_e2e::Result<Vec<String>> {
            let out = ns.kubectl(&["get", "all,configmaps,pvc,serviceaccounts,roles,rolebindings,leases", "-o", "name"])?;
            Ok(out
                .lines()
                .filter(|l| !l.contains("serviceaccount/default") && !l.contains("configmap/kube-root-ca.crt"))
                .map(str::to_owned)
                .collect())
        };
        let gone = wait_for("the release's objects and pods gone", Duration::from_secs(120), || async {
            Ok(leftovers()?.is_empty().then_some(()))
        })
        .await;
        assert!(gone.is_ok(), "left in the namespace: {:?}", leftovers()?);
        for kind in ["csidriver", "clusterrole", "clusterrolebinding"] {
            let out = ns.bed.kubectl(&["get", kind, "-l", "app.kubernetes.io/name=weir", "-o", "name"])?;
            assert!(out.trim().is_empty(), "left: {out}");
        }
        let nodes: Api<Node> = Api::all(ns.client.clone());
        for node in nodes.list(&ListParams::default()).await? {
            let prefix = format!("weir.io/fuse-{}-", ns.name);
            assert!(!node.labels().keys().any(|k| k.starts_with(&prefix)), "node label left: {:?}", node.labels());
        }
        let pvs: Api<PersistentVolume> = Api::all(ns.client.clone());
        let ours = format!("{}-demo", ns.name);
        assert!(pvs.get_opt(&ours).await?.is_none(), "PV {ours} left");
        let mounts = ns.bed.all_node_mounts()?;
        let mount_dir = format!("/var/lib/weir/mnt/{}/", ns.name);
        let stale: Vec<&str> = mounts.lines().filter(|l| l.contains(&mount_dir)).collect();
        assert!(stale.is_empty(), "mounts left on a node: {stale:?}");
        assert!(plugin_mounts()? <= mounts_before, "the plugin left mounts in the kubelet's directories");
        Ok(())
    })
    .await
}
