//! The CSI node plugin on the real cluster, installed with the chart (its
//! operator running in the cluster): pods mount a dataset's PVC and read
//! through the runtime's FUSE pod; two pods share one FUSE mount; a
//! read-only volume refuses writes; a FUSE pod killed under a reading app
//! pod is replaced without one failed read (the plugin holds the mount's
//! `/dev/fuse` descriptor for the next FUSE pod); a restarted plugin, before
//! or after a FUSE restart, keeps the mounts and mounts new pods; a file
//! rewritten in S3 reaches the pods within the sync interval, whole; when
//! the last pod goes, the node label and the FUSE pod go too.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};
use weir_e2e::nodes::FIRST_NODE;
use weir_e2e::pods::{reader_pod, sha_in, wait_running};
use weir_e2e::weir::{BridgeS3, HelmRelease, PodReader, TimedRead, bytes, http_get};
use weir_e2e::{TestNamespace, in_namespace, install_crd, wait_for};
use weir_operator::crd::dataset::DatasetPhase;
use weir_operator::crd::{CacheRuntime, Dataset};

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The CSI node plugin's pod reports itself registered with the first
/// node's kubelet (the readers').
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
                .filter(|n| n.name_any() == FIRST_NODE)
                .any(|n| n.spec.drivers.iter().any(|d| d.name == "csi.weir.io"));
            Ok(registered.then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// A reader of the volume. Every reader is on the first node: the test
/// restarts that node's plugin and FUSE pods under them and counts the
/// FUSE pods serving them.
fn app_pod(name: &str, claim: &str) -> Pod {
    reader_pod(name, claim, Some(FIRST_NODE))
}

/// Whether `pod` runs (or is to run) on the first node, the readers'.
fn on_first_node(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(FIRST_NODE)
}

/// Deletes the CSI plugin's pod while app-1 reads its volume in a loop;
/// returns the reads (with when they started), made until the new plugin
/// has run for 7 s; one at least after its first 3 s must succeed.
async fn restart_plugin_while_reading(
    ns: &TestNamespace,
    want: &str,
) -> anyhow::Result<Vec<TimedRead>> {
    let pods: Api<Pod> = ns.api();
    let plugin_pods = || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=csi"))
            .await?;
        Ok::<_, weir_e2e::Error>(
            list.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && on_first_node(p))
                .collect::<Vec<_>>(),
        )
    };
    let plugin = plugin_pods().await?.remove(0);
    let t0 = Instant::now();
    let reader = PodReader::start(&ns.bed, &ns.name, "app-1", "/data/data/a.bin", want);
    pods.delete(&plugin.name_any(), &DeleteParams::default())
        .await?;
    wait_for(
        "a new CSI plugin pod running",
        Duration::from_secs(120),
        || async {
            let running = plugin_pods().await?.into_iter().any(|p| {
                p.uid() != plugin.uid()
                    && p.status.and_then(|s| s.phase).as_deref() == Some("Running")
            });
            Ok(running.then_some(()))
        },
    )
    .await?;
    let settled = t0.elapsed() + Duration::from_secs(3);
    while t0.elapsed() < settled + Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reads = reader.stop();
    let failed: Vec<_> = reads
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(at, _)| *at)
        .collect();
    eprintln!(
        "{} reads in app-1 across a plugin restart, failed at {failed:?} (new plugin settled at {settled:?})",
        reads.len()
    );
    anyhow::ensure!(
        reads.iter().any(|(at, r)| *at > settled && r.is_ok()),
        "app-1 read after the restart: {reads:?}"
    );
    Ok(reads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_read_datasets_through_csi_and_survive_fuse_restarts() -> anyhow::Result<()> {
    in_namespace("csi", async |ns| {
        for crd in weir_operator::crd::all() {
            install_crd(&ns.client, &crd).await?;
        }
        let _release = HelmRelease::install(&ns.bed, &ns.name, &[])?;
        let s3 = BridgeS3::start("csi")?;
        let file = bytes(12 << 20, 7);
        s3.put("data/a.bin", &file)?;
        ns.kubectl(&["create", "secret", "generic", "s3-creds", "--from-literal=accessKeyId=k", "--from-literal=secretAccessKey=s"])?;
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
            "spec": {"replicas": 1, "tieredstore": {"levels": [{"mediumtype": "MEM", "quota": "128Mi"}]},
                "management": {"metadataSyncPolicy": {"mode": "Interval", "syncIntervalSeconds": 2}}}
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
        // A reader on another node gets its own FUSE pod, and that node's
        // plugin mounts in that node's kubelet namespace, not the first's.
        let nodes = ns.bed.node_names()?;
        if let Some(far) = nodes.last().filter(|n| *n != FIRST_NODE) {
            pods.create(&pp, &reader_pod("far", name, Some(far))).await?;
            wait_running(ns, "far").await?;
            assert_eq!(sha_in(ns, "far", "/data/data/a.bin").as_deref(), Some(want.as_str()), "the reader on {far}");
            ns.kubectl(&["delete", "pod", "far", "--wait=true", "--timeout=60s"])?;
        }
        let fuse_pods = || async {
            let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=fuse")).await?;
            Ok::<_, weir_e2e::Error>(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none() && on_first_node(p)).collect::<Vec<_>>())
        };
        assert_eq!(fuse_pods().await?.len(), 1, "one FUSE pod serves both");
        let write = ns.kubectl(&["exec", "app-1", "--", "sh", "-c", "echo x > /data/data/new.txt"]);
        let refused = write.expect_err("a read-only volume refuses writes").to_string();
        assert!(refused.contains("Read-only file system"), "{refused}");

        // Restart the plugin while app-1 reads: not one read fails, and a
        // pod created after the restart mounts and reads.
        let reads = restart_plugin_while_reading(ns, &want).await?;
        let failed: Vec<_> = reads.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(failed.is_empty(), "reads failed across a plugin restart: {failed:?}");
        pods.create(&pp, &app_pod("app-3", name)).await?;
        wait_running(ns, "app-3").await?;
        assert_eq!(sha_in(ns, "app-3", "/data/data/a.bin").as_deref(), Some(want.as_str()), "a pod mounted after the plugin restart reads");

        // Kill the FUSE pod while app-1 reads in a loop: the plugin holds
        // the mount's /dev/fuse descriptor, the new FUSE pod takes the live
        // mount over, and the reads only wait: not one fails, and the same
        // app pod reads again within 15 s.
        let old_fuse = fuse_pods().await?.remove(0);
        let reader = PodReader::start(&ns.bed, &ns.name, "app-1", "/data/data/a.bin", &want);
        tokio::time::sleep(Duration::from_secs(2)).await;
        pods.delete(&old_fuse.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
        let killed = Instant::now();
        wait_for("a new FUSE pod running", Duration::from_secs(60), || async {
            let running = fuse_pods().await?.into_iter().any(|p| {
                p.uid() != old_fuse.uid() && p.status.and_then(|s| s.phase).as_deref() == Some("Running")
            });
            Ok(running.then_some(()))
        })
        .await?;
        wait_for("app-1 reads again after the FUSE pod was killed", Duration::from_secs(60), || async {
            Ok((sha_in(ns, "app-1", "/data/data/a.bin").as_deref() == Some(want.as_str())).then_some(()))
        })
        .await?;
        let back = killed.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reads = reader.stop();
        let failed: Vec<_> = reads.iter().filter(|(_, r)| r.is_err()).collect();
        let longest = reads.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
        eprintln!(
            "reads work again {back:.1?} after the FUSE pod was killed; {} reads across it, {} failed, longest wait between reads {longest:.1?}",
            reads.len(),
            failed.len()
        );
        assert!(failed.is_empty(), "reads failed across a FUSE restart: {failed:?}");
        assert!(back < Duration::from_secs(15), "recovery took {back:?}");
        let restarts = pods.get("app-1").await?.status.and_then(|s| s.container_statuses).map(|c| c[0].restart_count);
        assert_eq!(restarts, Some(0), "the app pod was not restarted");
        let fuse_log = ns.kubectl(&["logs", "-l", "app.kubernetes.io/component=fuse", "--tail=-1"])?;
        assert!(fuse_log.contains("took over the live mount"), "{fuse_log}");

        // The restart is visible to the pod's owner and on /metrics.
        let recovered = wait_for("a MountRecovered Event on app-1", Duration::from_secs(20), || async {
            let events = ns.kubectl(&["get", "events", "--field-selector", "involvedObject.name=app-1"])?;
            Ok(events.contains("MountRecovered").then_some(()))
        })
        .await;
        if let Err(e) = recovered {
            let logs = ns.kubectl(&["logs", "-l", "app.kubernetes.io/component=csi", "-c", "plugin", "--tail=40"]).unwrap_or_default();
            let table = ns.bed.node_mounts(FIRST_NODE);
            let ours: Vec<&str> = table.lines().filter(|l| l.contains(&format!("{}-{name}", ns.name)) || l.contains("csi.weir.io/")).collect();
            panic!("{e}\nplugin log:\n{logs}\nmounts:\n{}", ours.join("\n"));
        }
        let plugin_pods = || async {
            let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=csi")).await?;
            Ok::<_, weir_e2e::Error>(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none() && on_first_node(p)).collect::<Vec<_>>())
        };
        let plugin = plugin_pods().await?.remove(0);
        let plugin_ip = plugin.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        let metrics = http_get(&format!("{plugin_ip}:9091"), "/metrics").unwrap_or_default();
        let takeovers: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weir_csi_fuse_takeovers_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(takeovers >= 1.0, "{metrics}");

        // The plugin restarted after a FUSE restart: the mount is the same
        // one (nothing stacked), so no read fails and a new pod mounts.
        let reads = restart_plugin_while_reading(ns, &want).await?;
        let failed: Vec<_> = reads.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(failed.is_empty(), "reads failed across a plugin restart after a FUSE restart: {failed:?}");
        pods.create(&pp, &app_pod("app-4", name)).await?;
        wait_running(ns, "app-4").await?;
        assert_eq!(sha_in(ns, "app-4", "/data/data/a.bin").as_deref(), Some(want.as_str()), "a pod mounted after both restarts reads");

        // Rewritten in S3 under the same name: the pods read the new bytes
        // within the sync interval (and the FUSE and client caches), and
        // never anything but the old or the new file whole.
        let synced = datasets.get(name).await?.status.map(|s| s.mounts).unwrap_or_default();
        assert_eq!(synced.first().map(|m| m.sync_policy.as_str()), Some("Interval (2s)"), "{synced:?}");
        let rewritten = bytes(12 << 20, 8);
        let fresh = sha256_hex(&rewritten);
        s3.put("data/a.bin", &rewritten)?;
        let put_at = Instant::now();
        let seen = std::sync::Mutex::new(Vec::new());
        wait_for("app-4 reads the rewritten file", Duration::from_secs(30), || async {
            let sha = sha_in(ns, "app-4", "/data/data/a.bin");
            seen.lock().unwrap().push(sha.clone());
            Ok((sha.as_deref() == Some(fresh.as_str())).then_some(()))
        })
        .await?;
        let arrived = put_at.elapsed();
        let seen = seen.into_inner().unwrap();
        eprintln!("the rewrite reached app-4 after {arrived:.1?} ({} reads)", seen.len());
        assert!(
            seen.iter().all(|s| s.as_deref() == Some(want.as_str()) || s.as_deref() == Some(fresh.as_str())),
            "a read that was neither version whole: {seen:?}"
        );
        assert!(arrived < Duration::from_secs(12), "the rewrite took {arrived:?} to reach the pod");
        for pod in ["app-1", "app-4"] {
            assert_eq!(sha_in(ns, pod, "/data/data/a.bin").as_deref(), Some(fresh.as_str()), "{pod} after the rewrite");
        }

        // The last pod gone: the node label and the FUSE pod go (OnDemand).
        for pod in ["app-1", "app-2", "app-3", "app-4"] {
            pods.delete(pod, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
        }
        let label = format!("weir.io/fuse-{}-{name}", ns.name);
        let nodes: Api<Node> = Api::all(ns.client.clone());
        let daemonsets: Api<DaemonSet> = ns.api();
        let cleaned = wait_for("node label and FUSE pod gone", Duration::from_secs(120), || async {
            let labelled = nodes.list(&ListParams::default().labels(&label)).await?.items.len();
            let scheduled = daemonsets
                .get(&format!("{name}-fuse"))
                .await?
                .status
                .map(|s| s.current_number_scheduled)
                .unwrap_or(0);
            let fuse = fuse_pods().await?.len();
            Ok((labelled == 0 && scheduled == 0 && fuse == 0).then_some(()))
        })
        .await;
        if let Err(e) = cleaned {
            // Why the kubelet did not unstage is in its log and the plugin's.
            let plugin_log = ns.kubectl(&["logs", "-l", "app.kubernetes.io/component=csi", "-c", "plugin", "--tail=60"]);
            let fuse_log = ns.kubectl(&["logs", "-l", "app.kubernetes.io/component=fuse", "--tail=30"]);
            anyhow::bail!("{e}\nplugin log:\n{plugin_log:?}\nFUSE log:\n{fuse_log:?}");
        }
        Ok(())
    })
    .await
}
