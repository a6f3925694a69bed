//! Real `weir master` processes on loopback: elections, failover under
//! load, catch-up, snapshot install on a wiped follower, full restarts.

mod common;

use common::{free_port, s3_server};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use weir::proto::master as pb;
use weir::proto::master::master_service_client::MasterServiceClient;
use weir_api::{ApiError, MasterClient};

struct Master {
    id: u64,
    addr: String,
    dir: PathBuf,
    peers: String,
    child: Option<Child>,
}

impl Master {
    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "master",
                "--id",
                &self.id.to_string(),
                "--peers",
                &self.peers,
                "--listen",
                &self.addr,
            ])
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--snapshot-every",
                "2000",
                "--heartbeat-ms",
                "100",
                "--election-ms",
                "500",
                "--worker-timeout-ms",
                "1500",
            ])
            .env("RUST_LOG", "warn,weir=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weir master");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(c) = self.child.take() {
            common::terminate(c);
        }
    }

    /// Asks this master alone (no leader following) for its view.
    async fn metric(&self, name: &str) -> Option<u64> {
        let body = reqwest_lite(&self.addr, "/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Master {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET over a TCP stream (keeps the test free of an
/// HTTP client dependency).
async fn reqwest_lite(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// One call through the leader-following client: `rpc!(client, method, request)`.
macro_rules! rpc {
    ($client:expr, $method:ident, $req:expr) => {{
        let req = ($req).clone();
        $client.call(move |mut c| {
            let r = req.clone();
            async move { c.$method(r).await }
        })
    }};
}

fn cluster(root: &Path, n: u64) -> Vec<Master> {
    let addrs: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    addrs
        .into_iter()
        .enumerate()
        .map(|(i, addr)| Master {
            id: i as u64 + 1,
            addr,
            dir: root.join(format!("m{}", i + 1)),
            peers: peers.clone(),
            child: None,
        })
        .collect()
}

fn client(masters: &[Master]) -> MasterClient {
    MasterClient::new(
        masters.iter().map(|m| m.addr.clone()).collect(),
        Duration::from_secs(20),
    )
    .unwrap()
}

async fn leader_of(masters: &[Master]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for m in masters.iter().filter(|m| m.child.is_some()) {
            if let Ok(mut c) = MasterServiceClient::connect(format!("http://{}", m.addr)).await
                && let Ok(info) = c.get_leader(pb::Empty {}).await
                && info.get_ref().known
            {
                return info.get_ref().leader_id;
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(client: &MasterClient, path: &str) -> Result<(), ApiError> {
    let req = pb::CreateRequest {
        path: path.into(),
        recursive: true,
        ..Default::default()
    };
    match rpc!(client, create_file, req).await {
        Ok(_) => Ok(()),
        // A create whose answer was lost in a failover was applied: the
        // retry finds the file. That is the create succeeding.
        Err(e) if e.code() == Some(Code::AlreadyExists) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn exists(client: &MasterClient, path: &str) -> bool {
    let req = pb::PathRequest { path: path.into() };
    rpc!(client, get_status, req).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_failover_under_load_keeps_every_acknowledged_create() {
    let root = tempfile::tempdir().unwrap();
    let mut masters = cluster(root.path(), 3);
    for m in masters.iter_mut() {
        m.start();
    }
    let client = Arc::new(client(&masters));
    let first_leader = leader_of(&masters).await;

    const TASKS: usize = 16;
    const PER_TASK: usize = 625;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (client, acked) = (client.clone(), acked.clone());
        handles.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..PER_TASK {
                let path = format!("/load/t{t}/f{i}");
                if create(&client, &path).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                    done.push(path);
                }
            }
            done
        }));
    }
    // Kill the leader mid-run.
    while acked.load(Ordering::Relaxed) < 3000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    let before_kill = acked.load(Ordering::Relaxed);
    masters[(first_leader - 1) as usize].kill9();
    while acked.load(Ordering::Relaxed) <= before_kill + 10 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "no new leader served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failover = killed_at.elapsed();
    let mut all = BTreeSet::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    eprintln!(
        "acknowledged {} creates; writes resumed {failover:?} after the leader was killed",
        all.len()
    );
    assert_eq!(
        all.len(),
        TASKS * PER_TASK,
        "every create was acknowledged in the end"
    );
    let new_leader = leader_of(&masters).await;
    assert_ne!(new_leader, first_leader);

    for path in &all {
        assert!(
            exists(&client, path).await,
            "acknowledged {path} is missing"
        );
    }

    // The old leader comes back and catches up with the log.
    let old = (first_leader - 1) as usize;
    masters[old].start();
    let leader_applied = masters[(new_leader - 1) as usize]
        .metric("weir_master_raft_last_applied")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = masters[old]
            .metric("weir_master_raft_last_applied")
            .await
            .unwrap_or(0);
        if applied >= leader_applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted master stuck at {applied} < {leader_applied}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inodes = 1 + 1 + TASKS as u64 + (TASKS * PER_TASK) as u64;
    assert_eq!(
        masters[(new_leader - 1) as usize]
            .metric("weir_master_inodes")
            .await,
        Some(inodes)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while masters[old].metric("weir_master_inodes").await != Some(inodes) {
        assert!(
            Instant::now() < deadline,
            "restarted master's namespace differs:\n{}",
            masters[old].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_wiped_follower_rejoins_and_full_restart_keeps_everything() {
    let root = tempfile::tempdir().unwrap();
    let mut masters = cluster(root.path(), 3);
    for m in masters.iter_mut() {
        m.start();
    }
    let client = client(&masters);
    let leader = leader_of(&masters).await;
    // Enough entries that the log is snapshotted and purged (every 2000).
    for i in 0..3000 {
        create(&client, &format!("/snap/f{i}")).await.unwrap();
    }
    let mount = pb::MountRequest {
        path: "/s3".into(),
        ufs_uri: "s3://bucket/data".into(),
        read_only: true,
        ..Default::default()
    };
    rpc!(client, mount, mount).await.unwrap();
    let pin = pb::SetAttributeRequest {
        path: "/snap/f7".into(),
        pinned: Some(true),
        ..Default::default()
    };
    rpc!(client, set_attribute, pin).await.unwrap();

    // Wipe a follower: it must come back through a snapshot.
    let follower = masters.iter().position(|m| m.id != leader).unwrap();
    masters[follower].kill9();
    std::fs::remove_dir_all(&masters[follower].dir).unwrap();
    masters[follower].start();
    // root, /snap, /s3 and the files; gauges refresh every 500 ms.
    let leader_inodes = 3003;
    let deadline = Instant::now() + Duration::from_secs(30);
    while masters[follower].metric("weir_master_inodes").await != Some(leader_inodes) {
        assert!(
            Instant::now() < deadline,
            "wiped follower did not catch up ({:?} of {leader_inodes} inodes); its log:\n{}",
            masters[follower].metric("weir_master_inodes").await,
            masters[follower].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        masters[follower]
            .dir
            .join("snapshots/current.snap")
            .exists(),
        "caught up through a snapshot"
    );

    // Restart every master: namespace, mounts and pins survive.
    for m in masters.iter_mut() {
        m.terminate();
    }
    for m in masters.iter_mut() {
        m.start();
    }
    leader_of(&masters).await;
    assert!(exists(&client, "/snap/f2999").await);
    let req = pb::PathRequest {
        path: "/snap/f7".into(),
    };
    let f7 = rpc!(client, get_status, req).await.unwrap();
    assert!(f7.pinned, "pin survived the restart");
    let table = rpc!(client, get_mount_table, pb::Empty {}).await.unwrap();
    assert_eq!(table.mounts.len(), 1);
    assert_eq!(table.mounts[0].ufs_uri, "s3://bucket/data");
    assert!(table.mounts[0].read_only);
    let info = rpc!(client, get_cluster_info, pb::Empty {}).await.unwrap();
    assert_eq!(info.inode_count, leader_inodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_followers_point_to_the_leader_and_bad_input_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut masters = cluster(root.path(), 3);
    for m in masters.iter_mut() {
        m.start();
    }
    let leader = leader_of(&masters).await;
    let follower = masters.iter().find(|m| m.id != leader).unwrap();
    let mut direct = MasterServiceClient::connect(format!("http://{}", follower.addr))
        .await
        .unwrap();
    let err = direct
        .get_status(pb::PathRequest { path: "/".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let hint = err
        .metadata()
        .get("x-weir-leader")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        hint.as_deref(),
        Some(masters[(leader - 1) as usize].addr.as_str())
    );

    let client = client(&masters);
    let cases: Vec<(&str, Code)> = vec![
        ("relative/path", Code::InvalidArgument),
        ("/a/../b", Code::InvalidArgument),
        ("/a//b", Code::InvalidArgument),
        ("/nul\0x", Code::InvalidArgument),
    ];
    for (path, code) in cases {
        let req = pb::CreateRequest {
            path: path.into(),
            ..Default::default()
        };
        let err = rpc!(client, create_file, req).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{path:?}: {err}");
    }
    let long = format!("/{}", "x".repeat(300));
    let req = pb::CreateRequest {
        path: long,
        ..Default::default()
    };
    let err = rpc!(client, create_file, req).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    let req = pb::PathRequest {
        path: "/missing".into(),
    };
    let err = rpc!(client, get_status, req).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    let req = pb::PathRequest {
        path: "/nothing-mounted".into(),
    };
    let err = rpc!(client, unmount, req).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t40_huge_ufs_directory_serves_at_once_and_counts_in_the_background() {
    const FILES: usize = 100_000;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("ufs");
    std::fs::create_dir_all(data.join("big")).unwrap();
    for i in 0..FILES {
        std::fs::write(data.join(format!("big/f{i:06}")), [b'x'; 3]).unwrap();
    }
    std::fs::write(data.join("top.txt"), b"hello").unwrap();
    let mut masters = cluster(root.path(), 1);
    masters[0].start();
    let client = client(&masters);
    leader_of(&masters).await;
    let mount = pb::MountRequest {
        path: "/data".into(),
        ufs_uri: format!("local://{}", data.display()),
        read_only: true,
        ..Default::default()
    };
    rpc!(client, mount, mount).await.unwrap();

    // A file deep in a directory that was never listed resolves at once.
    let started = Instant::now();
    let req = pb::PathRequest {
        path: "/data/big/f054321".into(),
    };
    let f = rpc!(client, get_status, req).await.unwrap();
    let first = started.elapsed();
    eprintln!("getStatus of an unloaded path in a {FILES}-file directory: {first:?}");
    assert!(first < Duration::from_secs(1), "took {first:?}");
    assert_eq!(
        (f.length, f.is_dir, f.persist),
        (3, false, pb::PersistState::Persisted as i32)
    );
    assert!(f.ufs_path.ends_with("/ufs/big/f054321"), "{}", f.ufs_path);
    let req = pb::PathRequest {
        path: "/data/big/missing".into(),
    };
    let err = rpc!(client, get_status, req).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));

    // The background count reports progress and converges.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = rpc!(client, get_cluster_info, pb::Empty {}).await.unwrap();
        let m = &info.mounts[0];
        if m.count_complete {
            assert_eq!(
                (m.file_count, m.ufs_total_bytes),
                (FILES as u64 + 1, FILES as u64 * 3 + 5)
            );
            break;
        }
        assert!(Instant::now() < deadline, "count did not converge: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The listing streams page by page, every entry once, in name order.
    let started = Instant::now();
    let req = pb::ListStatusRequest {
        path: "/data/big".into(),
        start_after: String::new(),
        page_size: 5000,
    };
    let mut stream = rpc!(client, list_status, req).await.unwrap();
    let (mut pages, mut names) = (0, Vec::with_capacity(FILES));
    while let Some(page) = stream.message().await.unwrap() {
        pages += 1;
        names.extend(page.entries.into_iter().map(|e| e.name));
    }
    eprintln!(
        "listed {} entries in {pages} pages in {:?}",
        names.len(),
        started.elapsed()
    );
    assert_eq!(names.len(), FILES);
    assert!(pages >= FILES / 5000);
    assert!(names.windows(2).all(|w| w[0] < w[1]));

    // Writes to a read-only mount are refused.
    let req = pb::CreateRequest {
        path: "/data/new".into(),
        ..Default::default()
    };
    let err = rpc!(client, create_file, req).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_workers_report_blocks_and_are_lost_when_silent() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("ufs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("ten.bin"), b"0123456789").unwrap();
    let mut masters = cluster(root.path(), 1);
    masters[0].start();
    let client = client(&masters);
    leader_of(&masters).await;
    let mount = pb::MountRequest {
        path: "/d".into(),
        ufs_uri: format!("local://{}", data.display()),
        ..Default::default()
    };
    rpc!(client, mount, mount).await.unwrap();
    let stat = pb::PathRequest {
        path: "/d/ten.bin".into(),
    };
    let file = rpc!(client, get_status, stat).await.unwrap();
    assert_eq!(file.cached_percent, 0);
    let block = weir::block::block_id(file.id, 0);

    let register = pb::RegisterWorkerRequest {
        host: "127.0.0.1".into(),
        rpc_port: 7000,
        data_port: 7001,
        tiers: vec![pb::TierUsage {
            tier: "MEM".into(),
            capacity_bytes: 1 << 30,
            used_bytes: 10,
            ..Default::default()
        }],
        block_ids: vec![block],
        block_tiers: vec!["MEM".into()],
        previous_id: 0,
        node: "node-a".into(),
    };
    let worker = rpc!(client, register_worker, register)
        .await
        .unwrap()
        .worker_id;
    let file = rpc!(client, get_status, stat).await.unwrap();
    assert_eq!(file.cached_percent, 100);
    let blocks = rpc!(client, get_file_block_info, stat).await.unwrap();
    assert_eq!(blocks.blocks.len(), 1);
    assert_eq!(
        blocks.blocks[0].locations[0]
            .worker
            .as_ref()
            .unwrap()
            .worker_id,
        worker
    );
    let info = rpc!(client, get_cluster_info, pb::Empty {}).await.unwrap();
    assert_eq!(info.mounts[0].cached_bytes, 10);
    assert_eq!(
        (info.capacity_bytes, info.used_bytes, info.workers.len()),
        (1 << 30, 10, 1)
    );
    assert_eq!(info.workers[0].node, "node-a", "the node it registered on");

    // Heartbeats keep the worker; silence loses it and its blocks.
    let beat = pb::HeartbeatRequest {
        worker_id: worker,
        removed_blocks: vec![],
        ..Default::default()
    };
    for _ in 0..4 {
        let r = rpc!(client, worker_heartbeat, beat).await.unwrap();
        assert!(!r.reregister);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        rpc!(client, get_cluster_info, pb::Empty {})
            .await
            .unwrap()
            .workers
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = rpc!(client, get_cluster_info, pb::Empty {}).await.unwrap();
    assert!(
        info.workers.is_empty(),
        "silent worker still listed: {:?}\n{}",
        info.workers,
        masters[0].log_tail()
    );
    assert_eq!(info.mounts[0].cached_bytes, 0);
    let r = rpc!(client, worker_heartbeat, beat).await.unwrap();
    assert!(r.reregister, "a lost worker is told to register again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_s3_mount_loads_lazily_and_counts() {
    let s3 = s3_server("data").await;
    for i in 0..50 {
        s3.put(&format!("train/part-{i:03}.bin"), &vec![b'z'; 1000 + i])
            .unwrap();
    }
    s3.put("README", b"hello s3").unwrap();
    let root = tempfile::tempdir().unwrap();
    let creds = root.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("key"), "testing").unwrap();
    std::fs::write(creds.join("secret"), "testing").unwrap();
    let mut masters = cluster(root.path(), 1);
    masters[0].start();
    let client = client(&masters);
    leader_of(&masters).await;
    let mount = pb::MountRequest {
        path: "/s3".into(),
        ufs_uri: "s3://data".into(),
        read_only: true,
        options: [("endpoint".to_owned(), s3.endpoint.clone())].into(),
        credential_files: [
            (
                "accessKeyId".to_owned(),
                creds.join("key").display().to_string(),
            ),
            (
                "secretAccessKey".to_owned(),
                creds.join("secret").display().to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    rpc!(client, mount, mount).await.unwrap();

    let req = pb::PathRequest {
        path: "/s3/train/part-007.bin".into(),
    };
    let f = rpc!(client, get_status, req).await.unwrap();
    assert_eq!((f.length, f.is_dir), (1007, false));
    assert_eq!(f.ufs_path, "s3://data/train/part-007.bin");
    let req = pb::ListStatusRequest {
        path: "/s3/train".into(),
        ..Default::default()
    };
    let mut stream = rpc!(client, list_status, req).await.unwrap();
    let mut n = 0;
    while let Some(page) = stream.message().await.unwrap() {
        n += page.entries.len();
    }
    assert_eq!(n, 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = rpc!(client, get_cluster_info, pb::Empty {}).await.unwrap();
        let m = &info.mounts[0];
        if m.count_complete {
            let bytes: u64 = (0..50).map(|i| 1000 + i).sum::<u64>() + 8;
            assert_eq!((m.file_count, m.ufs_total_bytes), (51, bytes));
            break;
        }
        assert!(Instant::now() < deadline, "count did not converge: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The secret's value is nowhere in what the master reports.
    let table = rpc!(client, get_mount_table, pb::Empty {}).await.unwrap();
    assert!(
        !format!("{table:?}").contains("testing"),
        "a credential value leaked into the mount table"
    );
}
