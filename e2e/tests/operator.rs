//! The operator on the real cluster: a Dataset + CacheRuntime over a bucket
//! of an S3 server become masters, workers, a PVC and a FUSE mount; a
//! DataLoad warms the cache to 100%; credentials appear nowhere but in their
//! Secret; deletion waits for the pods that use the data, then leaves
//! nothing behind. A second test runs three masters through a leader loss
//! and scales the workers.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::{Duration, SystemTime};
use weir_e2e::cache::{
    create_secret, dataset, install_crds, runtime, wait_bound, wait_ready, worker_nodes,
};
use weir_e2e::nodes::FIRST_NODE;
use weir_e2e::weir::{BridgeS3, OperatorProcess, bytes};
use weir_e2e::{TestNamespace, in_namespace, wait_for};
use weir_operator::crd::dataload::LoadPhase;
use weir_operator::crd::dataset::DatasetPhase;
use weir_operator::crd::{CacheRuntime, DataLoad, Dataset};

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

fn load(name: &str, dataset: &str, path: &str) -> DataLoad {
    serde_json::from_value(json!({
        "apiVersion": "data.weir.io/v1alpha1", "kind": "DataLoad",
        "metadata": {"name": name},
        "spec": {"dataset": {"name": dataset}, "target": [{"path": path}]},
    }))
    .expect("dataload literal")
}

async fn wait_load(
    ns: &TestNamespace,
    name: &str,
    phase: LoadPhase,
    timeout: Duration,
) -> anyhow::Result<DataLoad> {
    let loads: Api<DataLoad> = ns.api();
    Ok(
        wait_for(&format!("DataLoad {name} {phase:?}"), timeout, || async {
            let dl = loads.get(name).await?;
            let now = dl.status.as_ref().map(|s| s.phase.clone());
            Ok((now == Some(phase.clone())).then_some(dl))
        })
        .await?,
    )
}

async fn label_node(ns: &TestNamespace, label: &str, value: Option<&str>) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let patch = json!({"metadata": {"labels": {label: value}}});
    nodes
        .patch(
            // The first node: this machine, whose mounts this test reads.
            FIRST_NODE,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_binds_loads_and_reads_keeps_secrets_and_cleans_up() -> anyhow::Result<()> {
    in_namespace("op-journey", async |ns| {
        install_crds(ns).await?;
        let access_key = format!("AKIAWEIR{}", unique());
        let secret_key = format!("weir-secret-{}", unique());
        let s3 = BridgeS3::start("journey")?;
        let files = [
            ("data/a.bin", bytes(5 << 20, 1)),
            ("data/b.bin", bytes(12 << 20, 2)),
            ("data/dir/c.txt", b"hello from the cache\n".to_vec()),
        ];
        for (key, body) in &files {
            s3.put(key, body)?;
        }
        create_secret(ns, &access_key, &secret_key).await?;
        let op = OperatorProcess::start(&ns.bed, &ns.name, "op-a")?;
        let pp = PostParams::default();
        let name = "journey";
        ns.api::<Dataset>().create(&pp, &dataset(name, &s3)).await?;
        ns.api::<CacheRuntime>().create(&pp, &runtime(name, 1, 2)).await?;

        wait_bound(ns, name, Duration::from_secs(240)).await?;
        // A cron load of one directory every minute; checked at the end.
        let mut nightly = load("every-minute", name, "/data/dir");
        nightly.spec.policy = weir_operator::crd::dataload::LoadPolicy::Cron;
        nightly.spec.schedule = Some("* * * * *".into());
        ns.api::<DataLoad>().create(&pp, &nightly).await?;
        wait_ready(ns, "journey-master", 1, Duration::from_secs(60)).await?;
        wait_ready(ns, "journey-worker", 2, Duration::from_secs(120)).await?;
        let claim = ns.api::<PersistentVolumeClaim>().get(name).await?;
        assert_eq!(claim.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

        // A load of the whole mount completes and the dataset shows 100%.
        ns.api::<DataLoad>().create(&pp, &load("warm", name, "/data")).await?;
        let done = wait_load(ns, "warm", LoadPhase::Complete, Duration::from_secs(180)).await?;
        let progress = done.status.and_then(|s| s.progress).expect("progress");
        assert_eq!(progress.files_done, 3);
        assert_eq!(progress.bytes_done, (17 << 20) + 21);
        let datasets: Api<Dataset> = ns.api();
        wait_for("Dataset 100% cached", Duration::from_secs(60), || async {
            let ds = datasets.get(name).await?;
            let pct = ds.status.and_then(|s| s.cache_states).map(|c| c.cached_percentage);
            Ok((pct.as_deref() == Some("100.0%")).then_some(()))
        })
        .await?;
        let table = ns.kubectl(&["get", "datasets"])?;
        eprintln!("{table}");
        assert!(table.contains("100.0%") && table.contains("Bound"), "{table}");

        // A missing path fails the load, naming it.
        ns.api::<DataLoad>().create(&pp, &load("missing", name, "/data/nope")).await?;
        let failed = wait_load(ns, "missing", LoadPhase::Failed, Duration::from_secs(60)).await?;
        let reason = failed
            .status
            .map(|s| s.conditions.iter().map(|c| c.message.clone()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        assert!(reason.contains("/data/nope"), "the reason names the path: {reason}");

        // The FUSE pod of a labelled node serves the data at the host path.
        let label = format!("weir.io/fuse-{}-{name}", ns.name);
        label_node(ns, &label, Some("true")).await?;
        let mount = format!("/var/lib/weir/mnt/{}/{name}/fuse", ns.name);
        let read = wait_for("file read through the FUSE pod", Duration::from_secs(120), || async {
            Ok(std::fs::read(format!("{mount}/data/b.bin")).ok())
        })
        .await?;
        assert!(read == files[1].1, "b.bin read through FUSE matches S3");
        let small = std::fs::read_to_string(format!("{mount}/data/dir/c.txt"))?;
        assert_eq!(small, "hello from the cache\n");

        // A load of a dataset that is not there waits, saying why; a load
        // with a TTL goes away after it finished.
        ns.api::<DataLoad>().create(&pp, &load("orphan", "absent", "/")).await?;
        let loads: Api<DataLoad> = ns.api();
        wait_for("orphan load waits for its Dataset", Duration::from_secs(30), || async {
            let dl = loads.get("orphan").await?;
            let s = dl.status.unwrap_or_default();
            let waiting = s.phase == LoadPhase::Pending
                && s.conditions.iter().any(|c| c.reason == "DatasetNotBound" && c.message.contains("absent"));
            Ok(waiting.then_some(()))
        })
        .await?;
        let mut short_lived = load("short-lived", name, "/data/dir");
        short_lived.spec.ttl_seconds_after_finished = Some(3);
        loads.create(&pp, &short_lived).await?;
        wait_load(ns, "short-lived", LoadPhase::Complete, Duration::from_secs(60)).await?;
        wait_for("the finished load deleted after its TTL", Duration::from_secs(30), || async {
            Ok(loads.get_opt("short-lived").await?.is_none().then_some(()))
        })
        .await?;

        // A mount added to the Dataset reaches the running master.
        s3.put("extra/x.txt", b"a second mount\n")?;
        let first_mount = serde_json::to_value(&datasets.get(name).await?.spec.mounts[0])?;
        let mut second = first_mount.clone();
        second["mountPoint"] = json!(format!("s3://{}/extra", s3.bucket));
        second["name"] = json!("extra");
        let patch = json!({"spec": {"mounts": [first_mount, second]}});
        datasets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let extra = wait_for("the new mount read through FUSE", Duration::from_secs(60), || async {
            Ok(std::fs::read_to_string(format!("{mount}/extra/x.txt")).ok())
        })
        .await?;
        assert_eq!(extra, "a second mount\n");

        // The single master loses its state with its pod: the operator
        // mounts both again and reads go on.
        let runtimes: Api<CacheRuntime> = ns.api();
        let mounted_at = |rt: CacheRuntime| rt.status.and_then(|s| s.mount_time);
        let before = mounted_at(runtimes.get(name).await?);
        ns.api::<Pod>().delete("journey-master-0", &DeleteParams::default()).await?;
        wait_for("mounts re-applied after the master restart", Duration::from_secs(180), || async {
            let now = mounted_at(runtimes.get(name).await?);
            Ok((now.is_some() && now != before).then_some(()))
        })
        .await?;
        let again = wait_for("a read after the master restart", Duration::from_secs(60), || async {
            Ok(std::fs::read(format!("{mount}/data/a.bin")).ok())
        })
        .await?;
        assert!(again == files[0].1, "a.bin read after the master restart matches");
        let extra = wait_for("the second mount after the master restart", Duration::from_secs(60), || async {
            Ok(std::fs::read_to_string(format!("{mount}/extra/x.txt")).ok())
        })
        .await?;
        assert_eq!(extra, "a second mount\n");

        // Credentials: only in their Secret.
        let mut haystack = String::new();
        for args in [
            vec!["get", "configmaps", "-o", "yaml"],
            vec!["get", "pods", "-o", "yaml"],
            vec!["get", "statefulsets,daemonsets", "-o", "yaml"],
            vec!["get", "datasets,cacheruntimes,dataloads", "-o", "yaml"],
            vec!["get", "events", "-o", "yaml"],
        ] {
            haystack.push_str(&ns.kubectl(&args)?);
        }
        haystack.push_str(&ns.bed.kubectl(&["get", "pv", "-o", "yaml"])?);
        haystack.push_str(&op.log_text());
        for pod in ns.kubectl(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"])?.split_whitespace() {
            haystack.push_str(&ns.kubectl(&["logs", pod, "--all-containers"]).unwrap_or_default());
        }
        assert!(haystack.len() > 10_000, "the search covered the objects ({} bytes)", haystack.len());
        assert!(!haystack.contains(&access_key), "the access key leaked");
        assert!(!haystack.contains(&secret_key), "the secret key leaked");

        // Metrics and Events a user sees.
        let metrics = op.scrape()?;
        assert!(metrics.contains("weir_operator_reconciles_total"), "{metrics}");
        let events = ns.kubectl(&["get", "events"])?;
        assert!(events.contains("MountsApplied") && events.contains("LoadComplete"), "{events}");

        // The cron load ran at least twice, a minute apart.
        wait_for("two cron runs", Duration::from_secs(150), || async {
            let dl = loads.get("every-minute").await?;
            let s = dl.status.unwrap_or_default();
            let runs = (s.last_schedule_time.clone(), s.last_successful_time.clone(), s.phase);
            Ok(match runs {
                (Some(scheduled), Some(_), LoadPhase::Complete) => {
                    let first = dl.metadata.creation_timestamp.map(|t| t.0).expect("created");
                    let at: k8s_openapi::jiff::Timestamp = scheduled.parse().expect("a time");
                    // The second run is scheduled more than a minute after
                    // the load was made.
                    (at.duration_since(first).as_secs() >= 60).then_some(())
                }
                _ => None,
            })
        })
        .await?;

        // A pod using the PVC holds the Dataset's deletion, and says so.
        let user: Pod = serde_json::from_value(json!({
            "metadata": {"name": "reader"},
            "spec": {
                "containers": [{"name": "c", "image": "weir.io/e2e:dev", "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"], "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": name}}],
                "terminationGracePeriodSeconds": 0,
            },
        }))?;
        ns.api::<Pod>().create(&pp, &user).await?;
        datasets.delete(name, &DeleteParams::default()).await?;
        wait_for("deletion blocked, naming the pod", Duration::from_secs(30), || async {
            let ds = datasets.get(name).await?;
            let blocked = ds.status.iter().flat_map(|s| &s.conditions).any(|c| {
                c.type_ == "Terminating" && c.reason == "ClaimInUse" && c.message.contains("reader")
            });
            Ok(blocked.then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(datasets.get_opt(name).await?.is_some(), "the Dataset stays while reader runs");
        let events = ns.kubectl(&["get", "events"])?;
        assert!(events.contains("DeletionBlocked"), "{events}");

        ns.api::<Pod>().delete("reader", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
        wait_for("Dataset and runtime gone", Duration::from_secs(120), || async {
            let gone = datasets.get_opt(name).await?.is_none()
                && ns.api::<CacheRuntime>().get_opt(name).await?.is_none();
            Ok(gone.then_some(()))
        })
        .await?;
        let pvs: Api<PersistentVolume> = Api::all(ns.client.clone());
        let nodes: Api<Node> = Api::all(ns.client.clone());
        let daemonsets: Api<DaemonSet> = ns.api();
        wait_for("PV, node label, DaemonSet and FUSE mount gone", Duration::from_secs(120), || async {
            let pv = pvs.get_opt(&format!("{}-{name}", ns.name)).await?;
            let labelled = nodes.list(&ListParams::default().labels(&label)).await?.items.len();
            let ds = daemonsets.get_opt(&format!("{name}-fuse")).await?;
            let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(&mount);
            Ok((pv.is_none() && labelled == 0 && ds.is_none() && !mounted).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}

/// The leader's id from a master's `/readyz` ("leader N, applied").
fn leader_of(pod_ip: &str) -> Option<u64> {
    master_http(pod_ip, "/readyz")?
        .strip_prefix("leader ")?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// How many live workers the master at `pod_ip` knows (its own metric).
fn workers_known_by(pod_ip: &str) -> Option<u64> {
    master_http(pod_ip, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix("weir_master_workers "))?
        .trim()
        .parse()
        .ok()
}

/// The body of a GET to a master's HTTP port.
fn master_http(pod_ip: &str, path: &str) -> Option<String> {
    weir_e2e::weir::http_get(&format!("{pod_ip}:19200"), path)
}

/// The Dataset's cached percentage; it must still be Bound.
async fn cached_percentage(
    datasets: &Api<Dataset>,
    name: &str,
) -> weir_e2e::Result<Option<String>> {
    let status = datasets.get(name).await?.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        DatasetPhase::Bound,
        "Dataset {name} stays Bound"
    );
    Ok(status.cache_states.map(|c| c.cached_percentage))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_survive_a_leader_loss_and_workers_scale() -> anyhow::Result<()> {
    in_namespace("op-scale", async |ns| {
        install_crds(ns).await?;
        let s3 = BridgeS3::start("scale")?;
        let files = [
            ("data/a.bin", bytes(9 << 20, 3)),
            ("data/b.bin", bytes(20 << 20, 4)),
        ];
        for (key, body) in &files {
            s3.put(key, body)?;
        }
        // Many one-block files, so both first workers hold some blocks and
        // the scale-in has blocks to move.
        for i in 0..12 {
            s3.put(&format!("data/small/{i}.bin"), &bytes(2 << 20, 10 + i))?;
        }
        create_secret(ns, "unused-key", "unused-secret").await?;
        let op = OperatorProcess::start(&ns.bed, &ns.name, "op-b")?;
        let pp = PostParams::default();
        let name = "scale";
        ns.api::<Dataset>().create(&pp, &dataset(name, &s3)).await?;
        ns.api::<CacheRuntime>()
            .create(&pp, &runtime(name, 3, 2))
            .await?;
        wait_bound(ns, name, Duration::from_secs(240)).await?;
        wait_ready(ns, "scale-master", 3, Duration::from_secs(120)).await?;
        wait_ready(ns, "scale-worker", 2, Duration::from_secs(120)).await?;

        // Delete the leader's pod: the Dataset stays Bound and its status
        // still follows the cache (a load after the loss shows up in it).
        let pods: Api<Pod> = ns.api();
        let ip = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default()
        };
        let leader = wait_for("a leader", Duration::from_secs(60), || async {
            let p = pods.get("scale-master-0").await?;
            Ok(leader_of(&ip(&p)))
        })
        .await?;
        let leader_pod = format!("scale-master-{leader}");
        eprintln!("deleting the leader's pod {leader_pod}");
        pods.delete(&leader_pod, &DeleteParams::default()).await?;
        // A new leader learns of workers from their next heartbeat; a load
        // sent before then would put every block on the first one, and the
        // scale-in below would have nothing to move.
        wait_for(
            "a new leader that knows both workers",
            Duration::from_secs(90),
            || async {
                for i in 0..3 {
                    let Ok(p) = pods.get(&format!("scale-master-{i}")).await else {
                        continue;
                    };
                    let ip = ip(&p);
                    if leader_of(&ip) == Some(i) && i != leader && workers_known_by(&ip) == Some(2)
                    {
                        return Ok(Some(()));
                    }
                }
                Ok(None)
            },
        )
        .await?;
        let datasets: Api<Dataset> = ns.api();
        ns.api::<DataLoad>()
            .create(&pp, &load("after-loss", name, "/data"))
            .await?;
        wait_load(
            ns,
            "after-loss",
            LoadPhase::Complete,
            Duration::from_secs(180),
        )
        .await?;
        wait_for(
            "status shows the load (100% cached)",
            Duration::from_secs(60),
            || async {
                Ok(
                    (cached_percentage(&datasets, name).await?.as_deref() == Some("100.0%"))
                        .then_some(()),
                )
            },
        )
        .await?;
        wait_ready(ns, "scale-master", 3, Duration::from_secs(120)).await?;
        let new_leader = wait_for(
            "a leader after the loss",
            Duration::from_secs(60),
            || async {
                let p = pods.get("scale-master-0").await?;
                Ok(leader_of(&ip(&p)))
            },
        )
        .await?;
        eprintln!("leader {leader} -> {new_leader}");

        // Scale 2 -> 3: the runtime's status follows.
        let runtimes: Api<CacheRuntime> = ns.api();
        ns.kubectl(&["scale", &format!("cacheruntime/{name}"), "--replicas=3"])?;
        wait_ready(ns, "scale-worker", 3, Duration::from_secs(120)).await?;
        // One worker of a runtime per node.
        let nodes = worker_nodes(ns, "scale").await?;
        assert_eq!(nodes.len(), 3, "three workers on three nodes: {nodes:?}");
        // The admin report names each worker's node.
        wait_for(
            "the admin report naming the workers' nodes",
            Duration::from_secs(30),
            || async {
                let report = ns.kubectl(&[
                    "exec",
                    "scale-master-0",
                    "--",
                    "weir",
                    "admin",
                    "report",
                    "--json",
                ])?;
                let report: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
                let mut reported: Vec<String> = report["workers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w["node"].as_str().map(str::to_owned))
                    .collect();
                reported.sort();
                Ok((reported == nodes).then_some(()))
            },
        )
        .await?;
        wait_for(
            "status: 3 workers ready",
            Duration::from_secs(60),
            || async {
                let rt = runtimes.get(name).await?;
                Ok((rt.status.map(|s| s.worker_number_ready) == Some(3)).then_some(()))
            },
        )
        .await?;

        // 3 -> 1 while a reader reads through FUSE the whole time.
        let label = format!("weir.io/fuse-{}-{name}", ns.name);
        label_node(ns, &label, Some("true")).await?;
        let mount = format!("/var/lib/weir/mnt/{}/{name}/fuse", ns.name);
        let expected = files[1].1.clone();
        wait_for("the FUSE mount", Duration::from_secs(120), || async {
            Ok(std::fs::read(format!("{mount}/data/b.bin"))
                .ok()
                .filter(|b| *b == expected)
                .map(|_| ()))
        })
        .await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            let path = format!("{mount}/data/b.bin");
            std::thread::spawn(move || {
                let (mut reads, mut bad) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Past the page cache, so every read goes to the workers.
                    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
                    match std::fs::read(&path) {
                        Ok(b) if b == expected => {}
                        Ok(b) => bad.push(format!("read {} bytes that differ", b.len())),
                        Err(e) => bad.push(e.to_string()),
                    }
                    reads += 1;
                }
                (reads, bad)
            })
        };
        ns.kubectl(&["scale", &format!("cacheruntime/{name}"), "--replicas=1"])?;
        wait_ready(ns, "scale-worker", 1, Duration::from_secs(180)).await?;
        wait_for(
            "status: 1 worker ready, drain done",
            Duration::from_secs(60),
            || async {
                let rt = runtimes.get(name).await?;
                let s = rt.status.unwrap_or_default();
                Ok((s.worker_number_ready == 1 && s.drain.is_none()).then_some(()))
            },
        )
        .await?;
        // The leaving workers' blocks were copied to the one that stays: once
        // the master has expired them the dataset is still all cached.
        wait_for(
            "still 100% cached on one worker",
            Duration::from_secs(60),
            || async {
                let info = ns.kubectl(&[
                    "get",
                    "dataset",
                    name,
                    "-o",
                    "jsonpath={.status.cacheStates.cachedPercentage}",
                ])?;
                Ok((info == "100.0%").then_some(()))
            },
        )
        .await?;
        // Past the master's worker timeout (4 s) and a status refresh (5 s).
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (reads, bad) = reader.join().expect("reader thread");
        eprintln!("{reads} reads through FUSE during scale-in");
        assert!(reads >= 3, "the reader kept reading ({reads})");
        assert!(
            bad.is_empty(),
            "every read returned the right bytes: {bad:?}"
        );
        let events = ns.kubectl(&["get", "events"])?;
        let drained: Vec<&str> = events.lines().filter(|l| l.contains("Drain")).collect();
        eprintln!("{}", drained.join("\n"));
        assert!(
            events.contains("Draining") && events.contains("WorkersDrained"),
            "{events}"
        );
        assert!(
            !events.contains("(0 block(s) only there)"),
            "the leaving workers held blocks only they had: {events}"
        );
        assert_eq!(
            cached_percentage(&datasets, name).await?.as_deref(),
            Some("100.0%")
        );

        // Deleting the namespace leaves no PV, node label or DaemonSet.
        ns.bed
            .kubectl(&["delete", "namespace", &ns.name, "--wait=false"])?;
        let pvs: Api<PersistentVolume> = Api::all(ns.client.clone());
        let nodes: Api<Node> = Api::all(ns.client.clone());
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ns.client.clone());
        wait_for(
            "namespace, PV and node label gone",
            Duration::from_secs(180),
            || async {
                let gone = namespaces.get_opt(&ns.name).await?.is_none()
                    && pvs.get_opt(&format!("{}-{name}", ns.name)).await?.is_none()
                    && nodes
                        .list(&ListParams::default().labels(&label))
                        .await?
                        .items
                        .is_empty();
                Ok(gone.then_some(()))
            },
        )
        .await?;
        let daemonsets: Api<DaemonSet> = Api::all(ns.client.clone());
        let left = daemonsets
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
            .await?;
        assert!(
            left.items
                .iter()
                .all(|d| d.namespace().as_deref() != Some(&ns.name)),
            "no DaemonSet left"
        );
        assert!(
            !std::fs::read_to_string("/proc/self/mountinfo")?.contains(&mount),
            "FUSE unmounted"
        );
        drop(op);
        Ok(())
    })
    .await
}

/// Who holds the operator's Lease in `ns`.
async fn lease_holder(ns: &TestNamespace) -> weir_e2e::Result<Option<String>> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    Ok(leases
        .get_opt("weir-operator")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_one_leads_and_the_other_takes_over() -> anyhow::Result<()> {
    in_namespace("op-lease", async |ns| {
        install_crds(ns).await?;
        let mut ops = [
            OperatorProcess::start(&ns.bed, &ns.name, "op-a")?,
            OperatorProcess::start(&ns.bed, &ns.name, "op-b")?,
        ];
        let first = wait_for("a leader", Duration::from_secs(30), || lease_holder(ns)).await?;
        let (lead, standby) = if first == "op-a" { (0, 1) } else { (1, 0) };
        let gauge = |op: &OperatorProcess| {
            op.scrape()
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("weir_operator_leader "))
                .map(|l| l.trim_end().to_owned())
        };
        assert_eq!(gauge(&ops[lead]).as_deref(), Some("weir_operator_leader 1"));
        assert_eq!(
            gauge(&ops[standby]).as_deref(),
            Some("weir_operator_leader 0")
        );

        // The leader dies without releasing the Lease: the standby takes it
        // once the Lease (6 s here) runs out, and reconciles.
        ops[lead].kill();
        let taken = std::time::Instant::now();
        let next = wait_for("the standby leads", Duration::from_secs(30), || async {
            Ok(lease_holder(ns).await?.filter(|h| *h != first))
        })
        .await?;
        eprintln!("{first} killed; {next} leads after {:.1?}", taken.elapsed());
        assert!(
            taken.elapsed() < Duration::from_secs(15),
            "takeover took {:?}",
            taken.elapsed()
        );
        let pp = PostParams::default();
        let s3 = BridgeS3::start("lease")?;
        ns.api::<Dataset>()
            .create(&pp, &dataset("lonely", &s3))
            .await?;
        let datasets: Api<Dataset> = ns.api();
        wait_for(
            "the new leader reconciles a Dataset",
            Duration::from_secs(30),
            || async {
                let s = datasets.get("lonely").await?.status.unwrap_or_default();
                let seen = s.phase == DatasetPhase::NotBound
                    && s.conditions.iter().any(|c| c.reason == "NoRuntime");
                Ok(seen.then_some(()))
            },
        )
        .await?;
        assert_eq!(
            gauge(&ops[standby]).as_deref(),
            Some("weir_operator_leader 1")
        );
        datasets.delete("lonely", &DeleteParams::default()).await?;
        wait_for("the Dataset deleted", Duration::from_secs(30), || async {
            Ok(datasets.get_opt("lonely").await?.is_none().then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}
