//! The job service as a user runs it: real `weir master` and `weir worker`
//! processes on loopback, the `weir` CLI, and a real S3-compatible server
//! (moto) behind a proxy that records every request the cluster makes.

mod common;

use common::{CountingProxy, Proc, S3Server, creds, free_port, s3_server};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::proto::master as pb;
use weir::ufs::{OpendalUfs, Ufs, UfsPath};
use weir_api::MasterClient;

const BLOCK: u64 = 64 << 20;
const MIB: u64 = 1 << 20;

/// Masters and workers (MEM tiers on tmpfs), killed and cleaned up on drop.
struct Cluster {
    dir: tempfile::TempDir,
    master_addrs: Vec<String>,
    masters: Vec<Proc>,
    workers: Vec<Proc>,
    tiers: Vec<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.kill9();
        }
        for m in &mut self.masters {
            m.kill9();
        }
        for t in &self.tiers {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

impl Cluster {
    async fn start(masters: usize, workers: usize, tier_quota: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master_addrs: Vec<String> = (0..masters)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = master_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let masters = master_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Proc::start(
                    &format!("master{}", i + 1),
                    vec![
                        "master".into(),
                        format!("--id={}", i + 1),
                        format!("--peers={peers}"),
                        format!("--listen={addr}"),
                        format!(
                            "--data-dir={}",
                            dir.path().join(format!("m{}", i + 1)).display()
                        ),
                        "--worker-timeout-ms=3000".into(),
                        "--job-settle-ms=1500".into(),
                    ],
                    dir.path(),
                )
            })
            .collect();
        let mut c = Cluster {
            dir,
            master_addrs,
            masters,
            workers: vec![],
            tiers: vec![],
        };
        let client = c.client();
        wait("a leader", Duration::from_secs(30), || async {
            client
                .call(|mut m| async move { m.get_leader(pb::Empty {}).await })
                .await
                .is_ok_and(|l| l.known)
        })
        .await;
        for i in 0..workers {
            let shm = PathBuf::from(format!("/dev/shm/weir-jobs-{}-{i}", free_port()));
            c.workers.push(Proc::start(
                &format!("worker{i}"),
                vec![
                    "worker".into(),
                    format!("--masters={}", c.master_addrs.join(",")),
                    "--host=127.0.0.1".into(),
                    format!("--data-listen=127.0.0.1:{}", free_port()),
                    format!("--http-listen=127.0.0.1:{}", free_port()),
                    format!("--tier=MEM:{}:{tier_quota}", shm.display()),
                    format!(
                        "--state-dir={}",
                        c.dir.path().join(format!("worker{i}")).display()
                    ),
                    "--heartbeat-ms=300".into(),
                ],
                c.dir.path(),
            ));
            c.tiers.push(shm);
        }
        let client = c.client();
        wait("workers to register", Duration::from_secs(30), || async {
            client
                .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
                .await
                .is_ok_and(|i| i.workers.iter().filter(|w| !w.lost).count() == workers)
        })
        .await;
        c
    }

    fn client(&self) -> MasterClient {
        MasterClient::new(self.master_addrs.clone(), Duration::from_secs(30)).unwrap()
    }

    /// Runs the `weir` CLI against this cluster.
    fn weir(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(common::weir_bin());
        let (group, rest) = args.split_first().expect("a command");
        cmd.arg(group)
            .arg(format!("--masters={}", self.master_addrs.join(",")))
            .args(rest)
            .env("RUST_LOG", "warn");
        cmd.output().expect("run weir")
    }

    /// Runs the CLI and parses its JSON output.
    fn weir_json(&self, args: &[&str]) -> (bool, serde_json::Value, String) {
        let out = self.weir(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "weir {args:?}: not JSON ({e}): {}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.success(), json, stderr)
    }

    async fn mount_s3(&self, path: &str, endpoint: &str, creds: &BTreeMap<String, String>) {
        let req = pb::MountRequest {
            path: path.into(),
            ufs_uri: "s3://jobs".into(),
            write_type: pb::WriteType::CacheThrough as i32,
            options: [("endpoint".to_owned(), endpoint.to_owned())].into(),
            credential_files: creds.clone().into_iter().collect(),
            ..Default::default()
        };
        self.client()
            .call(|mut m| {
                let r = req.clone();
                async move { m.mount(r).await }
            })
            .await
            .unwrap();
    }

    async fn blocks(&self, path: &str) -> pb::FileBlockInfo {
        let req = pb::PathRequest { path: path.into() };
        self.client()
            .call(|mut m| {
                let r = req.clone();
                async move { m.get_file_block_info(r).await }
            })
            .await
            .unwrap()
    }

    async fn leader_index(&self) -> usize {
        let info = self
            .client()
            .call(|mut m| async move { m.get_leader(pb::Empty {}).await })
            .await
            .unwrap();
        self.master_addrs
            .iter()
            .position(|a| *a == info.leader_address)
            .expect("the leader is one of ours")
    }

    fn logs(&self) -> String {
        self.masters
            .iter()
            .chain(&self.workers)
            .map(|p| format!("--- {}\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn wait<F, Fut>(what: &str, limit: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn s3_ufs(s3: &S3Server, creds: &BTreeMap<String, String>) -> Arc<dyn Ufs> {
    let opts = [("endpoint".to_owned(), s3.endpoint.clone())].into();
    Arc::new(OpendalUfs::open("s3://jobs", &opts, creds).unwrap())
}

/// Uploads files of the given sizes (bytes differ per file) straight to S3;
/// returns (key, size) pairs.
async fn upload(ufs: &dyn Ufs, files: &[(String, u64)]) {
    let seed: Vec<u8> = (0..(8 * MIB) as usize)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (n, (key, size)) in files.iter().enumerate() {
        let mut w = ufs.writer(&UfsPath::parse(key).unwrap()).await.unwrap();
        let mut off = 0;
        while off < *size {
            let len = (*size - off).min(8 * MIB) as usize;
            let start = (n * 7919 + off as usize / 4096) % (seed.len() - len.min(seed.len()) + 1);
            w.write(seed[start..start + len].to_vec().into())
                .await
                .unwrap();
            off += len as u64;
        }
        w.close().await.unwrap();
    }
}

/// GETs of object bytes (listings excluded) the proxy passed to S3.
fn object_gets(proxy: &CountingProxy) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && !r.contains("list-type") && !r.contains("?location"))
        .collect()
}

fn blocks_of(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn j10_load_two_gib_once_per_block_then_two_replicas() {
    let s3 = s3_server("jobs").await;
    let proxy = CountingProxy::start(s3.endpoint.trim_start_matches("http://").into()).await;
    let c = Cluster::start(1, 2, "2600MiB").await;
    let creds = creds(c.dir.path());
    // Mixed sizes, 2 GiB in all: multi-block, exact-block, small and tiny.
    let mut files = vec![("big/a".to_owned(), 650 * MIB + 3)];
    files.extend((0..4).map(|i| (format!("mid/b{i}"), 200 * MIB - i)));
    files.push(("mid/exact".to_owned(), BLOCK));
    files.extend((0..14).map(|i| (format!("small/c{i:02}"), 30 * MIB + i)));
    files.extend((0..64).map(|i| (format!("small/tiny/d{i:02}"), MIB + i * 1000)));
    files.extend((0..40).map(|i| (format!("e{i:02}"), 10_000 + i)));
    files.push(("empty".to_owned(), 0));
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total > (2 << 30) - 64 * MIB && total <= 2 << 30, "{total}");
    upload(s3_ufs(&s3, &creds).as_ref(), &files).await;
    c.mount_s3("/s3", &format!("http://{}", proxy.addr), &creds)
        .await;

    let started = Instant::now();
    let (ok, job, stderr) = c.weir_json(&["fs", "load", "/s3", "--watch", "--json"]);
    let secs = started.elapsed().as_secs_f64();
    assert!(ok, "load failed: {job}\n{stderr}\n{}", c.logs());
    assert_eq!(job["state"], "Completed");
    assert_eq!(job["filesTotal"], files.len() as u64);
    assert_eq!(job["filesDone"], files.len() as u64);
    assert_eq!(job["bytesDone"], total);
    eprintln!(
        "loaded {} MiB in {secs:.1} s ({:.0} MiB/s)",
        total / MIB,
        total as f64 / MIB as f64 / secs
    );

    // 100% cached, as the admin report says.
    let (ok, report, _) = c.weir_json(&["admin", "report", "--json"]);
    assert!(ok);
    let mount = report["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == "/s3")
        .unwrap()
        .clone();
    assert_eq!(mount["cachedBytes"], total, "{report}");
    for (key, _) in &files {
        let info = c.blocks(&format!("/s3/{key}")).await;
        assert_eq!(info.file.unwrap().cached_percent, 100, "{key}");
    }

    // Exactly one GET per block, each a distinct range.
    let gets = object_gets(&proxy);
    let expected: u64 = files.iter().map(|f| blocks_of(f.1)).sum();
    let mut seen = HashMap::new();
    for g in &gets {
        *seen.entry(g.clone()).or_insert(0) += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "blocks fetched twice: {repeated:?}");
    assert_eq!(gets.len() as u64, expected, "GETs: {gets:?}");

    // A second copy of every block, copied worker to worker.
    let before = proxy.bytes();
    let (ok, job, stderr) =
        c.weir_json(&["fs", "load", "/s3", "--replicas", "2", "--watch", "--json"]);
    assert!(ok, "replicas=2 load failed: {job}\n{stderr}\n{}", c.logs());
    assert_eq!(job["state"], "Completed");
    for (key, size) in &files {
        let info = c.blocks(&format!("/s3/{key}")).await;
        assert_eq!(info.blocks.len() as u64, blocks_of(*size), "{key}");
        for b in &info.blocks {
            let mut holders: Vec<u64> = b
                .locations
                .iter()
                .map(|l| l.worker.as_ref().unwrap().worker_id)
                .collect();
            holders.dedup();
            assert_eq!(
                holders.len(),
                2,
                "{key} block {} on {holders:?}",
                b.block_id
            );
        }
    }
    assert_eq!(object_gets(&proxy).len() as u64, expected, "no new GETs");
    assert!(
        proxy.bytes() - before < 4 * MIB,
        "the second copies came from S3: {} bytes",
        proxy.bytes() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn j20_a_new_leader_resumes_a_load_without_fetching_it_again() {
    let s3 = s3_server("jobs").await;
    let proxy = CountingProxy::start(s3.endpoint.trim_start_matches("http://").into()).await;
    let c = Cluster::start(3, 2, "1200MiB").await;
    let creds = creds(c.dir.path());
    let files: Vec<(String, u64)> = (0..8).map(|i| (format!("f{i}"), 128 * MIB)).collect();
    let total: u64 = files.iter().map(|f| f.1).sum();
    upload(s3_ufs(&s3, &creds).as_ref(), &files).await;
    c.mount_s3("/s3", &format!("http://{}", proxy.addr), &creds)
        .await;

    // Paced so that the leader can be killed mid-way.
    let out = c.weir(&["fs", "load", "/s3", "--bandwidth", "100MiB"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut seen_before = 0;
    wait("the load to pass half way", Duration::from_secs(60), || {
        let (ok, job, _) = c.weir_json(&["job", "get", &id, "--json"]);
        assert!(ok && job["state"] != "Failed", "{job}");
        seen_before = job["bytesDone"].as_u64().unwrap_or(0);
        async move { seen_before * 2 >= total }
    })
    .await;
    let leader = c.leader_index().await;
    let mut c = c;
    c.masters[leader].kill9();
    eprintln!(
        "killed master {} at {} of {total} bytes",
        leader + 1,
        seen_before
    );

    let mut lowest_after = u64::MAX;
    let job = loop {
        let (ok, job, stderr) = c.weir_json(&["job", "get", &id, "--json"]);
        assert!(ok, "{stderr}");
        lowest_after = lowest_after.min(job["bytesDone"].as_u64().unwrap());
        if job["state"] != "Running" && job["state"] != "Pending" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["state"], "Completed", "{job}\n{}", c.logs());
    assert_eq!(job["bytesDone"], total);
    assert!(
        lowest_after * 4 >= total,
        "progress went back to {lowest_after} of {total} after the failover"
    );
    let fetched = proxy.bytes();
    assert!(
        fetched as f64 <= 1.1 * total as f64,
        "fetched {fetched} bytes for a {total} byte dataset"
    );
    for (key, _) in &files {
        let info = c.blocks(&format!("/s3/{key}")).await;
        assert_eq!(info.file.unwrap().cached_percent, 100, "{key}");
    }
    eprintln!(
        "failover: {fetched} bytes fetched for {total} ({:.3}x); progress never below {lowest_after}",
        fetched as f64 / total as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn j30_bad_targets_capacity_cancel_persist_and_free() {
    let s3 = s3_server("jobs").await;
    let c = Cluster::start(1, 2, "100MiB").await;
    let creds = creds(c.dir.path());
    let files: Vec<(String, u64)> = (0..6).map(|i| (format!("d/f{i}"), 40 * MIB)).collect();
    upload(s3_ufs(&s3, &creds).as_ref(), &files).await;
    c.mount_s3("/s3", &s3.endpoint, &creds).await;

    // A missing path: the job fails, naming it.
    let (ok, job, stderr) = c.weir_json(&["fs", "load", "/s3/nope", "--watch", "--json"]);
    assert!(!ok);
    assert_eq!(job["state"], "Failed");
    assert!(
        job["message"].as_str().unwrap().contains("/s3/nope"),
        "{job}"
    );
    assert!(stderr.contains("/s3/nope"), "{stderr}");

    // 240 MiB does not fit in 2 x 95 MiB: fail early, load nothing.
    let (ok, job, _) = c.weir_json(&["fs", "load", "/s3/d", "--watch", "--json"]);
    assert!(!ok);
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .contains("insufficient capacity"),
        "{job}"
    );
    assert_eq!(job["bytesDone"], 0);
    assert_eq!(c.blocks("/s3/d/f0").await.file.unwrap().cached_percent, 0);

    // Asked to, it loads the files that fit and says what it left out.
    let (ok, job, stderr) = c.weir_json(&[
        "fs",
        "load",
        "/s3/d",
        "--load-what-fits",
        "--watch",
        "--json",
    ]);
    assert!(ok, "{job}\n{stderr}");
    let loaded = job["filesDone"].as_u64().unwrap();
    assert_eq!(loaded, 4, "{job}");
    assert_eq!(job["filesSkipped"], 2);
    assert!(job["message"].as_str().unwrap().contains("what fits"));
    for i in 0..loaded {
        let info = c.blocks(&format!("/s3/d/f{i}")).await;
        assert_eq!(info.file.unwrap().cached_percent, 100, "f{i}");
    }

    // A glob that matches nothing fails; one that matches loads just that.
    let (ok, job, _) = c.weir_json(&["fs", "load", "/s3/d/*.csv", "--watch", "--json"]);
    assert!(!ok && job["message"].as_str().unwrap().contains("no file matches"));

    // Free: the blocks leave every worker.
    let (ok, job, stderr) = c.weir_json(&["fs", "free", "/s3/d", "--watch", "--json"]);
    assert!(ok, "{job}\n{stderr}");
    for (key, _) in &files {
        let info = c.blocks(&format!("/s3/{key}")).await;
        assert_eq!(info.file.unwrap().cached_percent, 0, "{key}");
    }

    // Cancel: a paced load stops and stays cancelled.
    let out = c.weir(&["fs", "load", "/s3/d/f[0-1]", "--bandwidth", "8MiB"]);
    assert!(out.status.success());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(c.weir(&["job", "cancel", &id]).status.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, job, _) = c.weir_json(&["job", "get", &id, "--json"]);
    assert_eq!(job["state"], "Cancelled", "{job}");
    let (ok, list, _) = c.weir_json(&["job", "ls", "--json"]);
    assert!(ok);
    assert!(list.as_array().unwrap().len() >= 6);

    // Persist: a cache-only file reaches S3 through a persist job.
    let local = c.dir.path().join("note.txt");
    std::fs::write(&local, b"written to the cache first").unwrap();
    let cp = c.weir(&[
        "fs",
        "cp",
        &format!("file:{}", local.display()),
        "/s3/w/note.txt",
        "--write-type",
        "MUST_CACHE",
    ]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    let ufs = s3_ufs(&s3, &creds);
    let key = UfsPath::parse("w/note.txt").unwrap();
    assert!(ufs.stat(&key).await.unwrap().is_none(), "not in S3 yet");
    let (ok, job, stderr) = c.weir_json(&["fs", "persist", "/s3/w", "--watch", "--json"]);
    assert!(ok, "{job}\n{stderr}\n{}", c.logs());
    assert_eq!(job["filesDone"], 1);
    let stat = ufs.stat(&key).await.unwrap().expect("persisted to S3");
    assert_eq!(stat.length, 26);
    let info = c.blocks("/s3/w/note.txt").await.file.unwrap();
    assert_eq!(info.persist, pb::PersistState::Persisted as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn j40_a_worker_killed_mid_load_has_its_tasks_done_elsewhere() {
    let s3 = s3_server("jobs").await;
    let mut c = Cluster::start(1, 3, "700MiB").await;
    let creds = creds(c.dir.path());
    let files: Vec<(String, u64)> = (0..8).map(|i| (format!("g{i}"), BLOCK)).collect();
    upload(s3_ufs(&s3, &creds).as_ref(), &files).await;
    c.mount_s3("/s3", &s3.endpoint, &creds).await;

    let out = c.weir(&["fs", "load", "/s3", "--bandwidth", "64MiB"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.workers[1].kill9();
    let out = c.weir(&["job", "get", &id, "--watch", "--json"]);
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{job}\n{}", c.logs());
    assert_eq!(job["failedCount"], 0, "{job}");

    // Once the master gives the dead worker up, loading again restores
    // what it held on the survivors.
    let client = c.client();
    wait(
        "the dead worker to expire",
        Duration::from_secs(20),
        || async {
            client
                .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
                .await
                .is_ok_and(|i| i.workers.iter().filter(|w| !w.lost).count() == 2)
        },
    )
    .await;
    let (ok, job, stderr) = c.weir_json(&["fs", "load", "/s3", "--watch", "--json"]);
    assert!(ok, "{job}\n{stderr}");
    for (key, _) in &files {
        let info = c.blocks(&format!("/s3/{key}")).await;
        assert_eq!(info.file.unwrap().cached_percent, 100, "{key}");
    }
}
