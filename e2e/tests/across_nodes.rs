//! Weir across the three nodes, on the chart-installed Weir (a worker per
//! node): a pod on one node reads a file whose block only another node's
//! worker holds, and the reading node's FUSE client counts it as a remote
//! read (not one byte from S3); a block no worker holds counts as a UFS
//! read; a worker pod deleted under a reader costs no read more than a
//! few seconds; a node cut off under a reader costs no read, shows in the
//! Dataset's status and Events, and counts again when it is back; and the
//! scheduling webhook puts pods that mount a dataset
//! on the node of its worker, leaves a pod with its own affinity alone, and
//! never stands in the way of a pod when it is down.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sha2::Digest;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weir_e2e::cache::{
    create_secret, dataset, events_of, install_crds, runtime, wait_bound, wait_ready, worker_nodes,
};
use weir_e2e::nodes::FIRST_NODE;
use weir_e2e::pods::{reader_pod, wait_running};
use weir_e2e::weir::{BridgeS3, HelmRelease, bytes, http_get};
use weir_e2e::{TestNamespace, in_namespace, wait_for};
use weir_operator::crd::dataload::LoadPhase;
use weir_operator::crd::{CacheRuntime, DataLoad, Dataset};
use weir_operator::names::{FUSE_METRICS_PORT, RuntimeNames};

const NAME: &str = "far";
const LOOP_FILES: usize = 6;
/// Files loaded with two copies of each block; one of them is read while
/// a node holding a copy is cut off.
const REP_FILES: usize = 12;

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The holders' nodes of each block of `path`, as `weir fs locate` says.
fn holder_nodes(ns: &TestNamespace, path: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let out = ns.kubectl(&[
        "exec",
        &format!("{NAME}-master-0"),
        "--",
        "weir",
        "fs",
        "locate",
        path,
        "--json",
    ])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    Ok(v["blocks"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .map(|b| {
                    b["holders"]
                        .as_array()
                        .map(|h| {
                            h.iter()
                                .filter_map(|h| h["node"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The FUSE pod on `node`, once it runs.
async fn fuse_pod_on(ns: &TestNamespace, node: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = ns.api();
    Ok(wait_for(
        &format!("the FUSE pod on {node} running"),
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=fuse"))
                .await?;
            Ok(list.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            }))
        },
    )
    .await?)
}

/// Bytes a FUSE client read by each way, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct ReadPaths {
    short_circuit: u64,
    passthrough_opens: u64,
    remote: u64,
    local: u64,
    ufs: u64,
}

fn scrape(fuse: &Pod) -> anyhow::Result<ReadPaths> {
    let ip = fuse
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or_else(|| anyhow::anyhow!("the FUSE pod has no IP"))?;
    let text = http_get(&format!("{ip}:{FUSE_METRICS_PORT}"), "/metrics")
        .ok_or_else(|| anyhow::anyhow!("no /metrics from the FUSE pod at {ip}"))?;
    let metric = |key: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in:\n{text}"))
    };
    let value = |path: &str| metric(&format!("weir_client_read_bytes_total{{path=\"{path}\"}} "));
    Ok(ReadPaths {
        short_circuit: value("short-circuit")?,
        passthrough_opens: metric("weir_client_passthrough_opens_total ")?,
        remote: value("remote")?,
        local: value("local")?,
        ufs: value("ufs")?,
    })
}

/// One pass over `file` with direct I/O (the page cache cannot answer),
/// 1 MiB per read: the slowest read, and the bytes' SHA-256.
fn timed_pass(file: &Path) -> std::io::Result<(Duration, String)> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(file)?;
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).expect("layout");
    // O_DIRECT wants an aligned buffer.
    let mut buf = vec![0u8; (1 << 20) + 4096];
    let start = buf.as_ptr().align_offset(layout.align());
    let chunk = &mut buf[start..start + layout.size()];
    let mut hash = sha2::Sha256::new();
    let mut slowest = Duration::ZERO;
    loop {
        let at = Instant::now();
        let n = f.read(chunk)?;
        slowest = slowest.max(at.elapsed());
        if n == 0 {
            break;
        }
        hash.update(&chunk[..n]);
    }
    Ok((slowest, format!("{:x}", hash.finalize())))
}

/// One pass of a [`ReadLoop`]: when it began, and its slowest read and
/// SHA-256, or why it failed.
type Pass = (Instant, Result<(Duration, String), String>);

/// Passes over one file through a node's mount, one after another on a
/// thread of its own, until stopped.
struct ReadLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Pass>>,
}

impl ReadLoop {
    fn start(file: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut passes = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                passes.push((at, timed_pass(&file).map_err(|e| e.to_string())));
            }
            passes
        });
        ReadLoop { stop, thread }
    }

    fn stop(self) -> Vec<Pass> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("reader thread")
    }
}

/// The passes that failed or read other bytes than `want`, and the slowest
/// read of all.
fn judge(passes: &[Pass], want: &str) -> (Vec<String>, Duration) {
    let failed = passes
        .iter()
        .filter_map(|(_, r)| match r {
            Ok((_, sha)) if sha == want => None,
            Ok((_, sha)) => Some(format!("wrong bytes: {sha}")),
            Err(e) => Some(e.clone()),
        })
        .collect();
    let slowest = passes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|(s, _)| *s)
        .max()
        .unwrap_or_default();
    (failed, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cross_nodes_and_outlive_a_worker() -> anyhow::Result<()> {
    in_namespace("across", async |ns| {
        let nodes = ns.bed.node_names()?;
        assert!(nodes.len() >= 3, "three nodes are needed (make test brings them up): {nodes:?}");
        install_crds(ns).await?;
        let _release = HelmRelease::install(&ns.bed, &ns.name, &["webhook.avoidCacheNodes=true"])?;
        let s3 = BridgeS3::start("far")?;
        let warm = bytes(6 << 20, 3);
        let cold = bytes(5 << 20, 4);
        let looped = bytes(24 << 20, 5);
        s3.put("data/warm.bin", &warm)?;
        s3.put("data/cold.bin", &cold)?;
        // Several copies, so one lands on a worker off the reader's node.
        for i in 0..LOOP_FILES {
            s3.put(&format!("data/loop-{i}.bin"), &looped)?;
        }
        let replicated = bytes(8 << 20, 6);
        for i in 0..REP_FILES {
            s3.put(&format!("data/rep-{i}.bin"), &replicated)?;
        }
        create_secret(ns, "unused-key", "unused-secret").await?;
        let pp = PostParams::default();
        ns.api::<Dataset>().create(&pp, &dataset(NAME, &s3)).await?;
        // The master's own worker timeout (10 s), not the shorter one the
        // other suites use: a dead worker must not cost a read that long.
        let mut rt = runtime(NAME, 1, 3);
        rt.spec.master.component.options.remove("worker_timeout_ms");
        ns.api::<CacheRuntime>().create(&pp, &rt).await?;
        wait_bound(ns, NAME, Duration::from_secs(240)).await?;
        wait_ready(ns, &format!("{NAME}-worker"), 3, Duration::from_secs(180)).await?;
        assert_eq!(worker_nodes(ns, NAME).await?.len(), 3, "a worker on each node");

        // Cache warm.bin through one worker (the master's client reads it
        // through the worker the placement rule picks), then read it from
        // a pod on a node that worker is not on.
        let master = format!("{NAME}-master-0");
        let cat = |path: &str| {
            ns.kubectl(&["exec", &master, "--", "sh", "-c", &format!("weir fs cat {path} | sha256sum")])
        };
        assert!(cat("/data/warm.bin")?.starts_with(&sha256_hex(&warm)));
        let held = holder_nodes(ns, "/data/warm.bin")?;
        assert_eq!(held.len(), 1, "one block: {held:?}");
        assert_eq!(held[0].len(), 1, "one worker holds it: {held:?}");
        let holder = held[0][0].clone();
        let reader_node = nodes.iter().find(|n| **n != holder).expect("another node").clone();
        let pods: Api<Pod> = ns.api();
        pods.create(&pp, &reader_pod("reader", NAME, Some(&reader_node))).await?;
        wait_running(ns, "reader").await?;
        let fuse = fuse_pod_on(ns, &reader_node).await?;
        let before = scrape(&fuse)?;
        let sha = ns.kubectl(&["exec", "reader", "--", "sha256sum", "/data/data/warm.bin"])?;
        assert!(sha.starts_with(&sha256_hex(&warm)), "right bytes on {reader_node}: {sha}");
        let after = scrape(&fuse)?;
        eprintln!("warm.bin held on {holder}, read on {reader_node}: {before:?} -> {after:?}");
        assert!(
            after.remote - before.remote >= warm.len() as u64,
            "the block came over the network from {holder}: {before:?} -> {after:?}"
        );
        assert_eq!(after.ufs, before.ufs, "not one byte from S3: {before:?} -> {after:?}");
        assert_eq!(after.local, before.local, "{reader_node}'s worker does not hold it: {before:?} -> {after:?}");
        assert_eq!(holder_nodes(ns, "/data/warm.bin")?, held, "the read left the block where it was");

        // Beside the block: a pod on the holder's node reads it from the
        // worker's file (short-circuit, or handed to the kernel whole:
        // passthrough), not over the network.
        pods.create(&pp, &reader_pod("beside", NAME, Some(&holder))).await?;
        wait_running(ns, "beside").await?;
        let near = fuse_pod_on(ns, &holder).await?;
        let before = scrape(&near)?;
        let sha = ns.kubectl(&["exec", "beside", "--", "sha256sum", "/data/data/warm.bin"])?;
        assert!(sha.starts_with(&sha256_hex(&warm)), "right bytes on {holder}: {sha}");
        let after = scrape(&near)?;
        eprintln!("warm.bin read on its holder {holder}: {before:?} -> {after:?}");
        assert!(
            after.short_circuit - before.short_circuit >= warm.len() as u64
                || after.passthrough_opens > before.passthrough_opens,
            "read from the worker's file on {holder}: {before:?} -> {after:?}"
        );
        assert_eq!(
            (after.remote, after.local, after.ufs),
            (before.remote, before.local, before.ufs),
            "nothing over the network"
        );
        drop(pods.delete("beside", &DeleteParams::default()).await);

        // A block no worker holds is read through a worker from S3.
        let sha = ns.kubectl(&["exec", "reader", "--", "sha256sum", "/data/data/cold.bin"])?;
        assert!(sha.starts_with(&sha256_hex(&cold)), "{sha}");
        let cold_after = scrape(&fuse)?;
        assert!(
            cold_after.ufs - after.ufs >= cold.len() as u64,
            "a miss counts as a UFS read: {after:?} -> {cold_after:?}"
        );

        // A worker pod deleted under a reader: read a cached file again and
        // again with direct I/O through the reading node's mount, and
        // delete the worker on another node that holds it.
        let mut far_copy = None;
        for i in 0..LOOP_FILES {
            let path = format!("/data/loop-{i}.bin");
            assert!(cat(&path)?.starts_with(&sha256_hex(&looped)));
            let on = holder_nodes(ns, &path)?[0][0].clone();
            if on != reader_node {
                far_copy = Some((format!("loop-{i}.bin"), on));
                break;
            }
        }
        let (loop_file, loop_holder) = far_copy.expect("a copy cached off the reader's node");
        let names = RuntimeNames::new(&ns.name, NAME);
        let file: PathBuf = ns
            .bed
            .on_node(&reader_node, &format!("{}/data/{loop_file}", names.host_mount_path()));
        let want = sha256_hex(&looped);
        let reading = ReadLoop::start(file);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = pods
            .list(&ListParams::default().labels(&format!(
                "app.kubernetes.io/instance={NAME},app.kubernetes.io/component=worker"
            )))
            .await?
            .items
            .into_iter()
            .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&loop_holder))
            .expect("the holder's worker pod");
        let deleted = Instant::now();
        pods.delete(&victim.name_any(), &DeleteParams::default()).await?;
        wait_for("the worker replaced and Ready", Duration::from_secs(120), || async {
            let list = pods
                .list(&ListParams::default().labels(&format!(
                    "app.kubernetes.io/instance={NAME},app.kubernetes.io/component=worker"
                )))
                .await?;
            let replaced = list.items.iter().any(|p| {
                p.name_any() == victim.name_any()
                    && p.uid() != victim.uid()
                    && p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                        c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            });
            Ok(replaced.then_some(()))
        })
        .await?;
        let replaced_after = deleted.elapsed();
        // Past the master's worker timeout (10 s), so reads also see what
        // happens when a silent worker would have been declared lost.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let passes = reading.stop();
        let after_delete: Vec<_> = passes.iter().filter(|(at, _)| *at + Duration::from_secs(1) >= deleted).collect();
        let (failed, slowest) = judge(&passes, &want);
        eprintln!(
            "{} passes over {loop_file} ({} from a second before the delete), read on {reader_node}; worker {} on {loop_holder} replaced and Ready {replaced_after:?} after its delete; slowest read {slowest:?}",
            passes.len(),
            after_delete.len(),
            victim.name_any()
        );
        assert!(failed.is_empty(), "reads failed or gave wrong bytes: {failed:?}");
        assert!(after_delete.len() >= 3, "the reader kept reading: {} passes", after_delete.len());
        assert!(slowest < Duration::from_secs(3), "a read took {slowest:?} with a worker gone");
        drop(pods.delete("reader", &DeleteParams::default()).await);

        a_lost_node_costs_no_read(ns, &replicated).await?;
        pods_are_steered_to_their_cache(ns, &s3).await
    })
    .await
}

/// A node's link to the others cut (its end of the veth on the node
/// bridge down): its kubelet, pods and worker go on running but nothing
/// reaches them, and they reach nothing. Restored when dropped.
struct LinkCut(String);

impl LinkCut {
    fn cut(node: &str) -> anyhow::Result<Self> {
        let n = node
            .rsplit('-')
            .next()
            .filter(|n| n.parse::<u32>().is_ok())
            .ok_or_else(|| anyhow::anyhow!("{node} is not a node of its own (weir-node-N)"))?;
        let link = format!("wn{n}");
        let done = std::process::Command::new("ip")
            .args(["link", "set", &link, "down"])
            .status()?;
        anyhow::ensure!(done.success(), "ip link set {link} down: {done}");
        Ok(LinkCut(link))
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", &self.0, "up"])
            .status();
    }
}

/// The Dataset's `WorkersAvailable` condition, as (status, message).
async fn workers_available(ns: &TestNamespace) -> weir_e2e::Result<Option<(String, String)>> {
    let ds = ns.api::<Dataset>().get(NAME).await?;
    Ok(ds
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "WorkersAvailable")
        .map(|c| (c.status, c.message)))
}

/// Each block of the rep files has two copies on two nodes (a DataLoad
/// with `replicas: 2`). A node holding a copy of one, neither the reader's
/// nor the master's, is cut off while a pod on the first node reads that
/// file in a loop: no read fails and no byte comes from S3 (the other copy
/// serves), the Dataset's status and an Event name the node; with the link
/// back, the node's worker registers again and its copies count again.
async fn a_lost_node_costs_no_read(ns: &TestNamespace, replicated: &[u8]) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let load: DataLoad = serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": "DataLoad", "metadata": {"name": "two-copies"},
        "spec": {"dataset": {"name": NAME}, "target": [{"path": "/data/rep-*.bin", "replicas": 2}]},
    }))?;
    ns.api::<DataLoad>().create(&pp, &load).await?;
    let loads: Api<DataLoad> = ns.api();
    wait_for(
        "DataLoad two-copies Complete",
        Duration::from_secs(180),
        || async {
            let phase = loads.get("two-copies").await?.status.map(|s| s.phase);
            assert_ne!(phase, Some(LoadPhase::Failed), "the load failed");
            Ok((phase == Some(LoadPhase::Complete)).then_some(()))
        },
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    let master_node = pods
        .get(&format!("{NAME}-master-0"))
        .await?
        .spec
        .and_then(|s| s.node_name)
        .unwrap_or_default();
    let mut choice = None;
    for i in 0..REP_FILES {
        let path = format!("/data/rep-{i}.bin");
        let held = holder_nodes(ns, &path)?;
        for copies in &held {
            assert_eq!(
                copies.len(),
                2,
                "{path}: two copies of each block: {held:?}"
            );
            assert_ne!(copies[0], copies[1], "{path}: on two nodes: {held:?}");
        }
        // Both copies off the reader's node, so it reads over the network;
        // the node cut holds the one it reads first (the first listed)
        // unless that is the master's node, which must stay.
        if choice.is_none()
            && !held[0].iter().any(|n| n == FIRST_NODE)
            && let Some(n) = held[0].iter().find(|n| **n != master_node)
        {
            choice = Some((format!("rep-{i}.bin"), n.clone()));
        }
    }
    let (file, lost_node) =
        choice.expect("a file with both copies off the reader's node (1 in 130 by chance)");
    pods.create(&pp, &reader_pod("steady", NAME, Some(FIRST_NODE)))
        .await?;
    wait_running(ns, "steady").await?;
    let fuse = fuse_pod_on(ns, FIRST_NODE).await?;
    let names = RuntimeNames::new(&ns.name, NAME);
    let path = ns.bed.on_node(
        FIRST_NODE,
        &format!("{}/data/{file}", names.host_mount_path()),
    );
    let want = sha256_hex(replicated);
    let before = scrape(&fuse)?;
    let reading = ReadLoop::start(path);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = LinkCut::cut(&lost_node)?;
    let cut_at = Instant::now();
    let message = wait_for(
        &format!("WorkersAvailable False naming {lost_node}"),
        Duration::from_secs(90),
        || async {
            Ok(workers_available(ns)
                .await?
                .filter(|(status, message)| status == "False" && message.contains(&lost_node))
                .map(|(_, m)| m))
        },
    )
    .await?;
    let noticed = cut_at.elapsed();
    wait_for(
        &format!("a WorkerLost Event naming {lost_node}"),
        Duration::from_secs(30),
        || async {
            let events = events_of(ns, NAME);
            Ok(events
                .lines()
                .any(|l| {
                    l.starts_with("Dataset") && l.contains("WorkerLost") && l.contains(&lost_node)
                })
                .then_some(()))
        },
    )
    .await?;
    // Read on a while with the node gone for good, past the master's
    // worker timeout.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut_at.elapsed())).await;
    let passes = reading.stop();
    let after = scrape(&fuse)?;
    let cut_for = cut_at.elapsed();
    drop(cut);
    let during: Vec<_> = passes.iter().filter(|(at, _)| *at >= cut_at).collect();
    let (failed, slowest) = judge(&passes, &want);
    eprintln!(
        "{lost_node} cut off for {cut_for:.1?}: {} passes over {file} ({} after the cut), slowest read {slowest:?}; the Dataset said so after {noticed:.1?}: {message}; read paths {before:?} -> {after:?}",
        passes.len(),
        during.len()
    );
    assert!(
        failed.is_empty(),
        "reads failed with {lost_node} cut off: {failed:?}"
    );
    assert!(
        during.len() >= 3,
        "the reader kept reading: {} passes",
        during.len()
    );
    assert_eq!(
        after.ufs, before.ufs,
        "every block came from its other copy, none from S3"
    );
    // The node back: its worker registers again, with its copies.
    let back = Instant::now();
    wait_for(
        "WorkersAvailable True again",
        Duration::from_secs(120),
        || async {
            Ok(workers_available(ns)
                .await?
                .filter(|(status, _)| status == "True")
                .map(|_| ()))
        },
    )
    .await?;
    let master = format!("{NAME}-master-0");
    wait_for(
        &format!("{lost_node}'s worker in the report and its copies counted"),
        Duration::from_secs(60),
        || async {
            // No answer yet (the worker registering again) is "not yet".
            let report = ns
                .kubectl(&["exec", &master, "--", "weir", "admin", "report", "--json"])
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(report.trim()).unwrap_or_default();
            let listed = v["workers"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["node"] == lost_node.as_str()));
            let held = holder_nodes(ns, &format!("/data/{file}")).unwrap_or_default();
            let counted = held.iter().all(|copies| copies.len() == 2)
                && held.iter().any(|c| c.contains(&lost_node));
            Ok((listed && counted).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "{lost_node} back: its worker counted again after {:.1?}",
        back.elapsed()
    );
    wait_for("a WorkersBack Event", Duration::from_secs(30), || async {
        Ok(events_of(ns, NAME)
            .lines()
            .any(|l| l.contains("WorkersBack"))
            .then_some(()))
    })
    .await?;
    drop(pods.delete("steady", &DeleteParams::default()).await);
    Ok(())
}

/// The node the scheduler put `pod` on, once it has.
async fn scheduled_node(ns: &TestNamespace, pod: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = ns.api();
    Ok(wait_for(
        &format!("pod {pod} scheduled"),
        Duration::from_secs(60),
        || async { Ok(pods.get(pod).await?.spec.and_then(|s| s.node_name)) },
    )
    .await?)
}

/// A dataset whose one worker sits on one node: pods mounting its PVC land
/// there; a pod with its own node affinity keeps it; with every operator
/// pod (the webhook's server) gone, pods are still created.
async fn pods_are_steered_to_their_cache(ns: &TestNamespace, s3: &BridgeS3) -> anyhow::Result<()> {
    const NEAR: &str = "near";
    let pp = PostParams::default();
    ns.api::<Dataset>().create(&pp, &dataset(NEAR, s3)).await?;
    ns.api::<CacheRuntime>()
        .create(&pp, &runtime(NEAR, 1, 1))
        .await?;
    wait_bound(ns, NEAR, Duration::from_secs(240)).await?;
    wait_ready(ns, &format!("{NEAR}-worker"), 1, Duration::from_secs(180)).await?;
    let cache_node = worker_nodes(ns, NEAR).await?.remove(0);
    // The operator has made its CA and published it to the apiserver.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    wait_for(
        "the webhook's caBundle published",
        Duration::from_secs(60),
        || async {
            let c = configs.get("weir-scheduling").await?;
            let published = c.webhooks.iter().flatten().all(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            });
            Ok(published.then_some(()))
        },
    )
    .await?;
    let pods: Api<Pod> = ns.api();
    // Three pods, each free to go anywhere: by chance all three would land
    // on the cache's node one time in 27.
    for i in 0..3 {
        let name = format!("near-{i}");
        pods.create(&pp, &reader_pod(&name, NEAR, None)).await?;
        let pod = pods.get(&name).await?;
        let steered = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("data.weir.io/scheduled-near").cloned());
        assert_eq!(
            steered.as_deref(),
            Some(NEAR),
            "{name} was steered: {:?}",
            pod.metadata.annotations
        );
        assert_eq!(
            scheduled_node(ns, &name).await?,
            cache_node,
            "{name} lands on the cache's node"
        );
    }
    // A pod that states its own node affinity keeps exactly that.
    let other = ns
        .bed
        .node_names()?
        .into_iter()
        .find(|n| *n != cache_node)
        .expect("another node");
    let own = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10,
        "preference": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [other]}]}}]}});
    let mut pod = reader_pod("own", NEAR, None);
    pod.spec.as_mut().expect("spec").affinity = Some(serde_json::from_value(own.clone())?);
    pods.create(&pp, &pod).await?;
    let kept = pods.get("own").await?;
    assert_eq!(
        serde_json::to_value(kept.spec.and_then(|s| s.affinity))?,
        own,
        "its own affinity, unchanged"
    );
    assert!(
        !kept
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("data.weir.io/scheduled-near"),
        "not marked as steered"
    );
    // A pod that uses no dataset (`webhook.avoidCacheNodes`) prefers nodes
    // without a cache worker: every node has one here (the far runtime's
    // three and near's), so the preference names all of them and the pod
    // is scheduled all the same.
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "app", "image": "weir.io/e2e:dev", "imagePullPolicy": "Never",
            "command": ["sleep", "3600"]}], "terminationGracePeriodSeconds": 0},
    }))?;
    pods.create(&pp, &plain).await?;
    let plain = pods.get("plain").await?;
    let annotations = plain.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("data.weir.io/scheduled-away-from-cache")
            .map(String::as_str),
        Some("true")
    );
    let away = serde_json::to_value(plain.spec.and_then(|s| s.affinity))?;
    let mut every = ns.bed.node_names()?;
    every.sort();
    assert_eq!(
        away["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]["matchExpressions"]
            [0],
        json!({"key": "kubernetes.io/hostname", "operator": "NotIn", "values": every}),
        "the cache nodes of every runtime"
    );
    scheduled_node(ns, "plain").await?;
    // The webhook down (no operator pod at all): a pod is created all the
    // same, only not steered.
    ns.kubectl(&["scale", "deployment", "weir-operator", "--replicas=0"])?;
    wait_for("no operator pod", Duration::from_secs(60), || async {
        let left = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await?;
    let created = Instant::now();
    pods.create(&pp, &reader_pod("unsteered", NEAR, None))
        .await?;
    let took = created.elapsed();
    let unsteered = pods.get("unsteered").await?;
    assert!(
        unsteered.spec.and_then(|s| s.affinity).is_none(),
        "not steered with the webhook down"
    );
    eprintln!(
        "pods near-0..2 on the cache's node {cache_node}; a pod created with the webhook down in {took:?}"
    );
    ns.kubectl(&["scale", "deployment", "weir-operator", "--replicas=2"])?;
    Ok(())
}
