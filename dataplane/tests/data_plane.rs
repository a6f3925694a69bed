//! The data plane as a user runs it: real `weir master`, `weir worker` and
//! `weir fuse` processes on loopback, a real S3-compatible server (moto),
//! real FUSE mounts.

mod common;

use common::{
    CountingProxy, Proc, creds, free_port, http_get, is_mounted, s3_server, s3_server_on,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::client::ClientError;
use weir::client::{ClientConfig, FileSystem};
use weir::proto::master as pb;
use weir::ufs::{OpendalUfs, Ufs, UfsPath};
use weir_api::WriteType;

const BLOCK: u64 = 64 << 20;

/// File contents that differ at every MiB: a random MiB, rotated by the
/// MiB's index, so a block served at the wrong offset cannot match.
struct Pattern(Vec<u8>);

impl Pattern {
    fn new(seed: u64) -> Self {
        let mut x = seed | 1;
        Self(
            (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect(),
        )
    }

    fn fill(&self, mut offset: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let mib = offset >> 20;
            let within = (offset & ((1 << 20) - 1)) as usize;
            let start = (within + (mib as usize * 7919)) % (1 << 20);
            let n = ((1 << 20) - within)
                .min((1 << 20) - start)
                .min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.0[start..start + n]);
            done += n;
            offset += n as u64;
        }
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(offset, &mut v);
        v
    }

    fn sha256(&self, len: u64) -> String {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            self.fill(off, &mut buf[..n]);
            h.update(&buf[..n]);
            off += n as u64;
        }
        hex(&h.finalize())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn upload(ufs: &dyn Ufs, path: &str, p: &Pattern, len: u64) {
    let mut w = ufs.writer(&UfsPath::parse(path).unwrap()).await.unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(8 << 20) as usize;
        w.write(p.bytes(off, n).into()).await.unwrap();
        off += n as u64;
    }
    w.close().await.unwrap();
}

fn s3_ufs(endpoint: &str, bucket: &str, creds: &BTreeMap<String, String>) -> Arc<dyn Ufs> {
    let opts = [("endpoint".to_owned(), endpoint.to_owned())].into();
    Arc::new(OpendalUfs::open(&format!("s3://{bucket}"), &opts, creds).unwrap())
}

/// A master and workers (MEM tiers on tmpfs), killed and cleaned up on drop.
struct Cluster {
    dir: tempfile::TempDir,
    master_addr: String,
    master: Proc,
    workers: Vec<Proc>,
    tiers: Vec<PathBuf>,
    fuses: Vec<(Proc, PathBuf)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (f, mp) in &mut self.fuses {
            f.terminate();
            if is_mounted(mp) {
                // MNT_FORCE aborts the FUSE connection: a failed test's
                // readers blocked on it (the holder in this process keeping
                // it alive) let the process exit.
                let _ = nix::mount::umount2(
                    &*mp,
                    nix::mount::MntFlags::MNT_FORCE | nix::mount::MntFlags::MNT_DETACH,
                );
            }
        }
        for w in &mut self.workers {
            w.kill9();
        }
        self.master.kill9();
        for t in &self.tiers {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

impl Cluster {
    async fn start(workers: usize, tier: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let master_addr = format!("127.0.0.1:{port}");
        let master = Proc::start(
            "master",
            vec![
                "master".into(),
                "--id=1".into(),
                format!("--peers=1={master_addr}"),
                format!("--listen={master_addr}"),
                format!("--data-dir={}", dir.path().join("master").display()),
                "--worker-timeout-ms=3000".into(),
            ],
            dir.path(),
        );
        let mut c = Cluster {
            dir,
            master_addr,
            master,
            workers: vec![],
            tiers: vec![],
            fuses: vec![],
        };
        let fs = c.fs();
        wait("a leader", || async {
            fs.master()
                .call(|mut m| async move { m.get_leader(pb::Empty {}).await })
                .await
                .is_ok_and(|l| l.known)
        })
        .await;
        for i in 0..workers {
            c.add_worker(i, tier);
        }
        c.wait_workers(workers).await;
        c
    }

    fn add_worker(&mut self, i: usize, tier: &str) {
        let shm = PathBuf::from(format!("/dev/shm/weir-test-{}-{i}", free_port()));
        let w = Proc::start(
            &format!("worker{i}"),
            vec![
                "worker".into(),
                format!("--masters={}", self.master_addr),
                "--host=127.0.0.1".into(),
                format!("--data-listen=127.0.0.1:{}", free_port()),
                format!("--http-listen=127.0.0.1:{}", free_port()),
                format!("--tier=MEM:{}:{tier}", shm.display()),
                format!(
                    "--state-dir={}",
                    self.dir.path().join(format!("worker{i}")).display()
                ),
                "--heartbeat-ms=300".into(),
            ],
            self.dir.path(),
        );
        self.workers.push(w);
        self.tiers.push(shm);
    }

    async fn wait_workers(&self, n: usize) {
        let fs = self.fs();
        wait("workers to register", || async {
            fs.master()
                .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
                .await
                .is_ok_and(|i| i.workers.iter().filter(|w| !w.lost).count() == n)
        })
        .await;
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(vec![self.master_addr.clone()]);
        c.metadata_ttl = Duration::from_millis(100);
        c
    }

    fn fs(&self) -> Arc<FileSystem> {
        FileSystem::new(self.client_config()).unwrap()
    }

    /// Mounts a local directory as the under-storage of `path`.
    async fn mount_local(&self, path: &str, dir: &Path, read_only: bool) {
        let uri = format!("local://{}", dir.display());
        self.mount(
            path,
            &uri,
            &[],
            &BTreeMap::new(),
            pb::WriteType::CacheThrough,
            read_only,
        )
        .await;
    }

    async fn mount(
        &self,
        path: &str,
        uri: &str,
        opts: &[(&str, &str)],
        creds: &BTreeMap<String, String>,
        wt: pb::WriteType,
        read_only: bool,
    ) {
        let req = pb::MountRequest {
            path: path.into(),
            ufs_uri: uri.into(),
            read_only,
            write_type: wt as i32,
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            credential_files: creds.clone().into_iter().collect(),
            ..Default::default()
        };
        self.fs()
            .master()
            .call(|mut m| {
                let r = req.clone();
                async move { m.mount(r).await }
            })
            .await
            .unwrap();
    }

    async fn fuse(&mut self, sub_path: &str, extra: &[&str]) -> PathBuf {
        let mp = self.dir.path().join(format!("mnt{}", self.fuses.len()));
        let mut args = vec![
            "fuse".to_owned(),
            format!("--masters={}", self.master_addr),
            format!("--mount-point={}", mp.display()),
            format!("--sub-path={sub_path}"),
            "--attr-ttl-ms=100".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = Proc::start(&format!("fuse{}", self.fuses.len()), args, self.dir.path());
        let mp2 = mp.clone();
        wait("the FUSE mount", || async { is_mounted(&mp2) }).await;
        self.fuses.push((p, mp.clone()));
        mp
    }

    async fn status(&self, path: &str) -> pb::FileInfo {
        let req = pb::PathRequest { path: path.into() };
        self.fs()
            .master()
            .call(|mut m| {
                let r = req.clone();
                async move { m.get_status(r).await }
            })
            .await
            .unwrap()
    }

    async fn set_pinned(&self, path: &str) {
        let req = pb::SetAttributeRequest {
            path: path.into(),
            pinned: Some(true),
            ..Default::default()
        };
        self.fs()
            .master()
            .call(|mut m| {
                let r = req.clone();
                async move { m.set_attribute(r).await }
            })
            .await
            .unwrap();
    }

    fn tier_files(&self) -> Vec<String> {
        self.tiers
            .iter()
            .flat_map(|t| std::fs::read_dir(t).into_iter().flatten())
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

async fn wait<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client_sha(fs: &Arc<FileSystem>, path: &str) -> String {
    struct H(Sha256);
    impl std::io::Write for H {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut r = fs.open(path).await.unwrap();
    let mut h = H(Sha256::new());
    r.copy_to(&mut h, 1 << 20, |_| {}).await.unwrap();
    hex(&h.0.finalize())
}

fn file_sha(path: &Path) -> String {
    read_sha(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn read_sha(mut f: impl std::io::Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hex(&h.finalize());
        }
        h.update(&buf[..n]);
    }
}

fn cat_sha(c: &Cluster, path: &str) -> String {
    let out = std::process::Command::new(common::weir_bin())
        .args(["fs", "--masters", &c.master_addr, "cat", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weir fs cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex(&Sha256::digest(&out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_reads_match_cold_and_warm_and_warm_reads_stay_off_s3() {
    let s3 = s3_server("bkt").await;
    let proxy = CountingProxy::start(format!("127.0.0.1:{}", s3.port)).await;
    let cred_dir = tempfile::tempdir().unwrap();
    let creds = creds(cred_dir.path());
    let direct = s3_ufs(&s3.endpoint, "bkt", &creds);
    let pattern = Pattern::new(42);
    let files: [(&str, u64); 6] = [
        ("zero", 0),
        ("one", 1),
        ("block-1", BLOCK - 1),
        ("block", BLOCK),
        ("block+1", BLOCK + 1),
        ("gib", 1 << 30),
    ];
    for (name, len) in files {
        upload(&*direct, &format!("d/{name}"), &pattern, len).await;
    }
    let mut c = Cluster::start(1, "3GiB").await;
    let endpoint = format!("http://{}", proxy.addr);
    c.mount(
        "/s3",
        "s3://bkt",
        &[("endpoint", &endpoint)],
        &creds,
        pb::WriteType::CacheThrough,
        true,
    )
    .await;
    let mnt = c.fuse("/s3", &[]).await;
    let fs = c.fs();
    let want: BTreeMap<&str, String> = files
        .iter()
        .map(|(n, len)| (*n, pattern.sha256(*len)))
        .collect();

    // Cold: each file first read through one of the three ways.
    for (i, (name, _)) in files.iter().enumerate() {
        let path = format!("/s3/d/{name}");
        let got = match i % 3 {
            0 => client_sha(&fs, &path).await,
            1 => file_sha(&mnt.join("d").join(name)),
            _ => cat_sha(&c, &path),
        };
        assert_eq!(got, want[name], "cold read of {name} (way {})", i % 3);
    }
    // The whole-block caches of partial reads settle; then nothing more
    // may come from S3.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fetched = proxy.bytes();
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    assert!(
        fetched >= total && fetched < total + total / 10,
        "cold reads fetched {fetched} bytes for {total}"
    );
    for (name, len) in files {
        let path = format!("/s3/d/{name}");
        assert_eq!(c.status(&path).await.cached_percent, 100, "{name} cached");
        assert_eq!(
            client_sha(&fs, &path).await,
            want[name],
            "warm client {name}"
        );
        assert_eq!(
            file_sha(&mnt.join("d").join(name)),
            want[name],
            "warm FUSE {name}"
        );
        if len < (256 << 20) {
            assert_eq!(cat_sha(&c, &path), want[name], "warm cat {name}");
        }
    }
    assert_eq!(proxy.bytes(), fetched, "warm reads went to S3");

    // Many readers holding one cached single-block file open at once: the
    // kernel reads it by passthrough and takes one backing file per inode,
    // so each open must get the one the others have (a second backing
    // fails the open with EIO).
    let single = mnt.join("d/block");
    let opened: Vec<std::fs::File> = (0..8)
        .map(|i| {
            std::fs::File::open(&single).unwrap_or_else(|e| panic!("open {i} of d/block: {e}"))
        })
        .collect();
    std::thread::scope(|s| {
        for (i, f) in opened.iter().enumerate() {
            let want = &want["block"];
            s.spawn(move || assert_eq!(&read_sha(f), want, "reader {i} of d/block"));
        }
    });
    drop(opened);

    // A file of many blocks, all cached on this machine's worker: the
    // kernel reads it from the worker's data file itself, so reads need no
    // FUSE daemon at all. Opened (by the daemon), then the daemon stopped:
    // both opens (sharing one backing file) read the whole GiB right, from
    // an emptied page cache.
    let gib = mnt.join("d/gib");
    let opened: Vec<std::fs::File> = (0..2).map(|_| std::fs::File::open(&gib).unwrap()).collect();
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let daemon = nix::unistd::Pid::from_raw(c.fuses[0].0.pid().unwrap() as i32);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, f) in opened.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((i, read_sha(&f)));
            // Closed with the daemon running again.
            f
        });
    }
    let mut shas = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(got) => shas.push(got),
            Err(_) => break,
        }
    }
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(
        shas.len(),
        2,
        "reads of d/gib waited for the stopped FUSE daemon: not passthrough"
    );
    for (i, sha) in shas {
        assert_eq!(
            sha, want["gib"],
            "reader {i} of d/gib with the daemon stopped"
        );
    }

    // Random offsets, through the client and through FUSE.
    let mut x: u64 = 7;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut reader = fs.open("/s3/d/gib").await.unwrap();
    let fuse_file = std::fs::File::open(mnt.join("d/gib")).unwrap();
    for _ in 0..200 {
        let off = next(1 << 30);
        let len = (next(3 << 20) as usize + 1).min(((1u64 << 30) - off) as usize);
        let mut buf = vec![0u8; len];
        let n = reader.read_at(off, &mut buf).await.unwrap();
        assert_eq!(n, len);
        assert!(buf == pattern.bytes(off, len), "client read at {off}+{len}");
        use std::os::unix::fs::FileExt;
        let mut buf2 = vec![0u8; len];
        fuse_file.read_exact_at(&mut buf2, off).unwrap();
        assert!(buf2 == buf, "FUSE read at {off}+{len}");
    }
    let mut r = fs.open("/s3/d/block+1").await.unwrap();
    let mut last = [0u8; 4];
    assert_eq!(r.read_at(BLOCK - 3, &mut last).await.unwrap(), 4);
    assert_eq!(
        last.to_vec(),
        pattern.bytes(BLOCK - 3, 4),
        "across the block edge"
    );
    assert_eq!(r.read_at(BLOCK + 1, &mut last).await.unwrap(), 0, "EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_tiers_evict_to_the_low_watermark_keep_pinned_and_leased_blocks_and_survive_restart() {
    let ufs = tempfile::tempdir().unwrap();
    let pattern = Pattern::new(9);
    for i in 0..20 {
        let mut f = pattern.bytes(i << 20, 1 << 20);
        f[0] = i as u8;
        std::fs::write(ufs.path().join(format!("f{i:02}")), f).unwrap();
    }
    // 12 MiB, evicting from 10.8 MiB down to 6 MiB.
    let mut c = Cluster::start(1, "12MiB:0.9:0.5").await;
    c.mount_local("/l", ufs.path(), false).await;
    let fs = c.fs();
    let read = |i: u64| {
        let fs = fs.clone();
        async move {
            let mut r = fs.open(&format!("/l/f{i:02}")).await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            assert_eq!(r.read_at(0, &mut buf).await.unwrap(), 1 << 20);
            assert_eq!(buf[0], i as u8);
            r
        }
    };
    drop(read(0).await);
    c.set_pinned("/l/f00").await;
    // The pin reaches the worker with a heartbeat after the master's sweep.
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(read(1).await);
    // Held open: its short-circuit lease keeps block f01 in place (once
    // the client's metadata shows the block cached here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = read(1).await;
    for i in 2..20 {
        drop(read(i).await);
    }
    // Removals reach the master with the next heartbeat.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quota = 12u64 << 20;
    let used = |info: &pb::ClusterInfo| info.workers[0].tiers[0].used_bytes;
    let fsc = fs.clone();
    let info = fsc
        .master()
        .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
        .await
        .unwrap();
    assert!(
        used(&info) <= quota * 9 / 10,
        "MEM holds {} of {quota}",
        used(&info)
    );
    let mut cached = Vec::new();
    for i in 0..20 {
        if c.status(&format!("/l/f{i:02}")).await.cached_percent == 100 {
            cached.push(i);
        }
    }
    assert!(
        cached.contains(&0),
        "the pinned file was evicted: {cached:?}"
    );
    assert!(
        cached.contains(&1),
        "the leased file was evicted: {cached:?}"
    );
    assert!(cached.len() < 20, "nothing was evicted: {cached:?}");
    let http = c.workers[0]
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--http-listen="))
        .unwrap()
        .to_owned();
    let metrics = http_get(&http, "/metrics").await;
    let used_metric = metrics
        .lines()
        .find(|l| l.starts_with("weir_worker_tier_used_bytes{tier=\"MEM\"}"))
        .unwrap_or_else(|| panic!("no MEM usage metric in\n{metrics}"));
    assert_eq!(
        used_metric
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        used(&info),
        "per-tier metric"
    );
    // Evictions go down to the low watermark, not one block at a time:
    // right after one, at most the low watermark plus the new block.
    assert!(
        cached.len() <= 11,
        "{} MiB cached after evicting to 6 MiB",
        cached.len()
    );
    drop(held);

    // A restart keeps every block: remove them from the under-storage and
    // read them from the cache alone.
    c.workers[0].terminate();
    c.workers[0].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.wait_workers(1).await;
    for &i in &cached {
        std::fs::remove_file(ufs.path().join(format!("f{i:02}"))).unwrap();
    }
    let fs2 = c.fs();
    for &i in &cached {
        let path = format!("/l/f{i:02}");
        let st = c.status(&path).await;
        assert_eq!(
            st.cached_percent,
            100,
            "{path} (id {}) after restart; tier holds {:?}\n{}",
            st.id,
            c.tier_files(),
            c.workers[0].log_tail()
        );
        let mut want = pattern.bytes(i << 20, 1 << 20);
        want[0] = i as u8;
        let mut r = fs2.open(&path).await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        r.read_at(0, &mut buf).await.unwrap();
        assert!(buf == want, "{path} from the cache after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t30_a_killed_worker_or_a_dead_s3_never_yields_wrong_bytes_or_half_blocks() {
    let mut s3 = s3_server("bkt").await;
    let cred_dir = tempfile::tempdir().unwrap();
    let creds = creds(cred_dir.path());
    let direct = s3_ufs(&s3.endpoint, "bkt", &creds);
    let pattern = Pattern::new(3);
    let len = 3 * BLOCK - 12345;
    upload(&*direct, "big", &pattern, len).await;
    upload(&*direct, "never-read", &pattern, 5 << 20).await;
    let mut c = Cluster::start(2, "1GiB").await;
    c.mount(
        "/s3",
        "s3://bkt",
        &[("endpoint", &s3.endpoint)],
        &creds,
        pb::WriteType::CacheThrough,
        true,
    )
    .await;
    // Read over the data port, as a remote client does.
    let mut cfg = c.client_config();
    cfg.short_circuit = false;
    let fs = FileSystem::new(cfg).unwrap();
    assert_eq!(
        client_sha(&fs, "/s3/big").await,
        pattern.sha256(len),
        "cold"
    );
    let mut r = fs.open("/s3/big").await.unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    let mut killed = false;
    while off < len {
        let n = r.read_at(off, &mut buf).await.unwrap();
        h.update(&buf[..n]);
        off += n as u64;
        if !killed && off >= BLOCK + (8 << 20) {
            // Kill the worker streaming block 1 to us, mid-block.
            let info = fs.block_info("/s3/big").await.unwrap();
            let holder = info.blocks[1].locations[0].worker.clone().unwrap();
            let port = holder.rpc_port;
            let victim = c
                .workers
                .iter()
                .position(|w| w.args.iter().any(|a| a.ends_with(&format!(":{port}"))))
                .unwrap();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &worker_pid(&c.workers[victim]).to_string()])
                .status();
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(
        hex(&h.finalize()),
        pattern.sha256(len),
        "read across a worker's death"
    );

    // S3 down: a clear error, and no block (or half block) of the file.
    let id = c.status("/s3/never-read").await.id;
    s3.stop();
    let err = match fs.open("/s3/never-read").await {
        Ok(mut r) => r.read_at(0, &mut buf).await.unwrap_err(),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        matches!(err, ClientError::Worker { .. } | ClientError::Data { .. }),
        "{err:?}"
    );
    assert!(msg.contains("never-read") || msg.contains("bkt"), "{msg}");
    // A file's blocks are `<block>.<offset>.<len>.block` markers over its
    // `<inode>.data` file; the data file goes with its last block.
    for name in c.tier_files() {
        let block = name.split('.').next().and_then(|b| b.parse::<u64>().ok());
        let of_file = match block {
            Some(n) if name.ends_with(".data") => n == id,
            Some(b) => b >> 24 == id,
            None => false,
        };
        assert!(!of_file, "{name}: part of an unreadable file kept");
    }

    // Every worker down (S3 still down, so only the cache has the bytes):
    // a read waits for them to come back and then gets the right bytes...
    for w in c.workers.iter_mut() {
        w.kill9();
    }
    let down = Instant::now();
    let reading = {
        let fs = fs.clone();
        tokio::spawn(async move { client_sha(&fs, "/s3/big").await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!reading.is_finished(), "the read waits for a worker");
    for w in c.workers.iter_mut() {
        w.restart();
    }
    assert_eq!(
        reading.await.unwrap(),
        pattern.sha256(len),
        "read across every worker's restart"
    );
    eprintln!(
        "a read with every worker down finished {:.1?} after they went",
        down.elapsed()
    );
    // ...and when none comes back, it fails (after its retry budget of
    // 15 s) with an error, never with wrong bytes.
    for w in c.workers.iter_mut() {
        w.kill9();
    }
    let down = Instant::now();
    let mut r = fs.open("/s3/big").await.unwrap();
    let err = r.read_at(0, &mut buf).await.unwrap_err();
    let waited = down.elapsed();
    eprintln!("with no worker left the read failed after {waited:.1?}: {err}");
    assert!(
        matches!(err, ClientError::Worker { .. } | ClientError::Data { .. }),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(60),
        "the read gave up after {waited:?}"
    );
}

fn worker_pid(p: &Proc) -> u32 {
    // The child's pid, from /proc: the only weir worker with these args.
    let want = p.args.join("\0");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&want)
        {
            return pid;
        }
    }
    panic!("no process for {}", p.name);
}

async fn write_file(
    fs: &Arc<FileSystem>,
    path: &str,
    p: &Pattern,
    len: u64,
    mode: Option<WriteType>,
) {
    let mut w = fs.create(path, mode).await.unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(3 << 20) as usize;
        w.write(&p.bytes(off, n)).await.unwrap();
        off += n as u64;
    }
    let info = w.close().await.unwrap();
    assert_eq!(info.length, len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t40_write_types_leave_cache_and_s3_as_they_promise() {
    let mut s3 = s3_server("bkt").await;
    let cred_dir = tempfile::tempdir().unwrap();
    let creds = creds(cred_dir.path());
    let mut c = Cluster::start(1, "2GiB").await;
    // Signed stats: moto answers unsigned HEADs of private objects 403.
    let direct = s3_ufs(&s3.endpoint, "bkt", &creds);
    let in_s3 = |path: &str| {
        let path = UfsPath::parse(path).unwrap();
        let direct = direct.clone();
        async move { direct.stat(&path).await.unwrap().is_some() }
    };
    for (dir, wt) in [
        ("mc", pb::WriteType::MustCache),
        ("ct", pb::WriteType::CacheThrough),
        ("th", pb::WriteType::Through),
        ("at", pb::WriteType::AsyncThrough),
    ] {
        c.mount(
            &format!("/{dir}"),
            &format!("s3://bkt/{dir}"),
            &[("endpoint", &s3.endpoint)],
            &creds,
            wt,
            false,
        )
        .await;
    }
    let fs = c.fs();
    let p = Pattern::new(77);
    let len = BLOCK + (3 << 20);
    for dir in ["mc", "ct", "th", "at"] {
        write_file(&fs, &format!("/{dir}/f"), &p, len, None).await;
    }
    let persisted = pb::PersistState::Persisted as i32;
    let cases = [
        // (dir, in S3 at once, cached, persist state right after close)
        ("mc", false, 100, pb::PersistState::NotPersisted as i32),
        ("ct", true, 100, persisted),
        ("th", true, 0, persisted),
    ];
    for (dir, stored, cached, state) in cases {
        let st = c.status(&format!("/{dir}/f")).await;
        assert_eq!(in_s3(&format!("{dir}/f")).await, stored, "{dir} in S3");
        assert_eq!((st.cached_percent, st.persist), (cached, state), "{dir}");
        assert_eq!(
            client_sha(&fs, &format!("/{dir}/f")).await,
            p.sha256(len),
            "{dir} reads back"
        );
    }
    // ASYNC_THROUGH: cached at once, in S3 soon after.
    assert_eq!(c.status("/at/f").await.cached_percent, 100);
    wait("the ASYNC_THROUGH file to be persisted", || async {
        c.status("/at/f").await.persist == persisted
    })
    .await;
    assert!(in_s3("at/f").await);
    let back = direct
        .read(&UfsPath::parse("at/f").unwrap(), 0, len)
        .await
        .unwrap();
    assert!(back == p.bytes(0, len as usize), "persisted bytes differ");

    // Persisted in the order written: a file queued behind a big one and
    // deleted before its turn is never written to S3.
    write_file(&fs, "/at/big", &p, 3 * BLOCK, None).await;
    write_file(&fs, "/at/late", &p, 1 << 20, None).await;
    fs.delete("/at/late", false).await.unwrap();
    wait("the big file to be persisted", || async {
        c.status("/at/big").await.persist == persisted
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!in_s3("at/late").await, "a deleted file was persisted");
    assert!(in_s3("at/big").await);

    // Journaled: an ASYNC_THROUGH file written while S3 is down survives
    // its worker being killed, and lands once S3 is back.
    let port = s3.port;
    s3.stop();
    write_file(&fs, "/at/journaled", &p, 5 << 20, None).await;
    c.workers[0].kill9();
    c.workers[0].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.wait_workers(1).await;
    assert_ne!(c.status("/at/journaled").await.persist, persisted);
    // (The worker may persist it the moment S3 answers again.)
    let s3 = s3_server_on(port, "bkt").await;
    wait("the journaled file to be persisted", || async {
        c.status("/at/journaled").await.persist == persisted
    })
    .await;
    let back = direct
        .read(&UfsPath::parse("at/journaled").unwrap(), 0, 5 << 20)
        .await
        .unwrap();
    assert!(back == p.bytes(0, 5 << 20), "journaled bytes differ");
    drop(s3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t50_bad_input_gets_the_right_errors() {
    let ufs = tempfile::tempdir().unwrap();
    std::fs::write(ufs.path().join("a.txt"), b"alpha").unwrap();
    std::fs::create_dir(ufs.path().join("many")).unwrap();
    for i in 0..2500 {
        std::fs::write(ufs.path().join(format!("many/f{i:05}")), b"").unwrap();
    }
    let mut c = Cluster::start(1, "64MiB").await;
    c.mount_local("/ro", ufs.path(), true).await;
    let rw = c.fuse("/", &[]).await;
    // Without passthrough, so the kernel's own page cache holds what is read.
    let ro = c.fuse("/ro", &["--read-only", "--no-passthrough"]).await;
    assert_eq!(std::fs::read(ro.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(rw.join("ro/a.txt")).unwrap(), b"alpha");
    // A directory larger than one listing page, listed through FUSE.
    let mut names: Vec<String> = std::fs::read_dir(ro.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = (0..2500).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names, want, "readdir across pages");
    let enoent = std::fs::read(rw.join("ro/missing")).unwrap_err();
    assert_eq!(enoent.raw_os_error(), Some(2), "{enoent}");
    for target in [ro.join("new.txt"), rw.join("ro/new.txt")] {
        let err = std::fs::write(&target, b"x").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(30),
            "EROFS for {}: {err}",
            target.display()
        );
    }
    // A writable part of the namespace takes new files, written once.
    std::fs::create_dir(rw.join("scratch")).unwrap();
    std::fs::write(rw.join("scratch/n.txt"), b"new").unwrap();
    let back = std::fs::read(rw.join("scratch/n.txt"))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.fuses[0].0.log_tail()));
    assert_eq!(back, b"new");
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(rw.join("scratch/n.txt"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(1), "rewrite refused: {err}");

    // statfs reports the cache: 64 MiB.
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&rw)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(nums[0] * nums[1], 64 << 20, "statfs: {text}");

    let fs = c.fs();
    let missing = fs.open("/ro/missing").await.unwrap_err();
    assert_eq!(missing.code(), Some(tonic::Code::NotFound), "{missing}");
    // `..` never reaches an under-storage: refused at mount time, and by
    // a worker asked to read such a path directly.
    let out = std::process::Command::new(common::weir_bin())
        .args([
            "fs",
            "--masters",
            &c.master_addr,
            "mount",
            "/evil",
            "local:///tmp/../etc",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`..`"));
    let info = fs.block_info("/ro/a.txt").await.unwrap();
    let mount_id = info.file.as_ref().unwrap().mount_id;
    let worker = fs
        .master()
        .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
        .await
        .unwrap()
        .workers[0]
        .address
        .clone()
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", worker.data_port))
        .await
        .unwrap();
    use weir::wire::{ErrorKind, ReadRequest, Request, Response, UfsSource};
    weir::wire::send(
        &mut conn,
        &Request::Read(ReadRequest {
            block: 999 << 24,
            offset: 0,
            len: 10,
            source: Some(UfsSource {
                mount_id,
                path: "../../etc/passwd".into(),
                block_offset: 0,
                block_len: 10,
            }),
            cache: true,
        }),
    )
    .await
    .unwrap();
    let resp: Response = weir::wire::recv(&mut conn).await.unwrap().unwrap();
    assert!(
        matches!(
            resp,
            Response::Error {
                kind: ErrorKind::Invalid,
                ..
            }
        ),
        "{resp:?}"
    );

    // Completed files keep the kernel's page cache across opens: with the
    // only worker gone, a file read before still reads.
    c.workers[0].kill9();
    assert_eq!(
        std::fs::read(ro.join("a.txt")).unwrap(),
        b"alpha",
        "page cache kept"
    );
}

/// What the readers of t60 saw: operations done, and every failure.
#[derive(Default)]
struct ReadLog {
    big_passes: std::sync::atomic::AtomicU64,
    dir_rounds: std::sync::atomic::AtomicU64,
    /// The longest a single read of `big` took, in milliseconds.
    longest_read_ms: std::sync::atomic::AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// Reads every MiB of `big` through one descriptor opened once, checking
/// each, and drops the file's pages after each pass so the next pass asks
/// the FUSE process again.
fn read_big_forever(
    big: PathBuf,
    len: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<ReadLog>,
) {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;
    let pattern = Pattern::new(60);
    let file = std::fs::File::open(&big).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::SeqCst) {
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            let started = Instant::now();
            let read = file.read_exact_at(&mut buf[..n], offset);
            log.longest_read_ms
                .fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
            match read {
                Ok(()) if buf[..n] == pattern.bytes(offset, n)[..] => {}
                Ok(()) => log
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("wrong bytes at {offset}")),
                Err(e) => log
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("read at {offset}: {e}")),
            }
            offset += n as u64;
        }
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        log.big_passes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Lists `dir` and reads each small file in it, over and over.
fn read_dir_forever(dir: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>, log: Arc<ReadLog>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        let names = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(e),
        };
        match names {
            Ok(names) if names.len() == 20 => {
                for name in names {
                    let i: usize = name[1..].parse().unwrap();
                    match std::fs::read(dir.join(&name)) {
                        Ok(b) if b == small_file(i) => {}
                        Ok(_) => log
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("wrong bytes in {name}")),
                        Err(e) => log
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("read {name}: {e}")),
                    }
                }
            }
            Ok(names) => log
                .failures
                .lock()
                .unwrap()
                .push(format!("listed {} entries", names.len())),
            Err(e) => log.failures.lock().unwrap().push(format!("list: {e}")),
        }
        log.dir_rounds.fetch_add(1, Ordering::SeqCst);
    }
}

fn small_file(i: usize) -> Vec<u8> {
    format!("small file {i}\n").repeat(1000 + i).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t60_a_fuse_restart_under_readers_is_a_pause_not_an_error() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ufs = tempfile::tempdir().unwrap();
    let big_len = BLOCK + (32 << 20);
    let mut big = vec![0u8; big_len as usize];
    Pattern::new(60).fill(0, &mut big);
    std::fs::write(ufs.path().join("big.bin"), &big).unwrap();
    drop(big);
    std::fs::create_dir(ufs.path().join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(ufs.path().join(format!("d/f{i}")), small_file(i)).unwrap();
    }
    let mut c = Cluster::start(1, "512MiB").await;
    c.mount_local("/u", ufs.path(), true).await;

    // The holder (the CSI plugin's part) in this process: it keeps the mount
    // while `in_use` says a volume needs it.
    let in_use = Arc::new(AtomicBool::new(true));
    let flag = in_use.clone();
    let holder = weir_handover::Holder::new(move |_| flag.load(Ordering::SeqCst));
    let socket = c.dir.path().join("fd-holder.sock");
    holder.listen(&socket).unwrap();
    let holder_arg = format!("--fd-holder={}", socket.display());
    let mnt = c.fuse("/u", &[&holder_arg]).await;
    let held_generation = |g: u64| {
        let held = holder.held();
        held.len() == 1 && held[0].generation == g && held[0].mount_point == mnt
    };
    wait("the descriptor lodged", || async { held_generation(0) }).await;

    let successor = c.fuses[0].0.prepare_restart();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(ReadLog::default());
    let readers = [
        std::thread::spawn({
            let (big, stop, log) = (mnt.join("big.bin"), stop.clone(), log.clone());
            move || read_big_forever(big, big_len, stop, log)
        }),
        std::thread::spawn({
            let (dir, stop, log) = (mnt.join("d"), stop.clone(), log.clone());
            move || read_dir_forever(dir, stop, log)
        }),
    ];
    let progress = |log: &ReadLog| {
        (
            log.big_passes.load(Ordering::SeqCst),
            log.dir_rounds.load(Ordering::SeqCst),
        )
    };
    wait("the readers to get going", || async {
        let (big, dir) = progress(&log);
        big >= 1 && dir >= 2
    })
    .await;

    // SIGKILL: nothing is unmounted; readers block rather than fail.
    c.fuses[0].0.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(is_mounted(&mnt), "the mount outlives its FUSE process");
    assert!(held_generation(0));
    let before = progress(&log);
    c.fuses[0].0.restart_prepared(successor);
    wait("the new FUSE process to take the mount over", || async {
        held_generation(1)
    })
    .await;
    wait("the readers to go on", || async {
        let now = progress(&log);
        now.0 >= before.0 + 2 && now.1 >= before.1 + 3
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    let failures = log.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "readers failed across the restart: {failures:?}\n{}",
        c.fuses[0].0.log_tail()
    );
    eprintln!(
        "the longest read across the restart took {} ms",
        log.longest_read_ms.load(Ordering::SeqCst)
    );
    assert!(
        std::fs::read_to_string(&c.fuses[0].0.log)
            .unwrap()
            .contains("took over the live mount"),
        "{}",
        c.fuses[0].0.log_tail()
    );

    // SIGTERM while a volume uses the mount: left mounted for the next one.
    c.fuses[0].0.terminate();
    assert!(is_mounted(&mnt), "kept while in use");
    c.fuses[0].0.restart();
    wait("a second takeover", || async { held_generation(2) }).await;
    assert_eq!(
        std::fs::read(mnt.join("d/f7")).unwrap(),
        small_file(7),
        "served after the second takeover"
    );
    // SIGTERM once nothing uses it: unmounted, and the holder lets go.
    in_use.store(false, Ordering::SeqCst);
    c.fuses[0].0.terminate();
    assert!(!is_mounted(&mnt), "unmounted when no volume uses it");
    assert!(holder.held().is_empty());
}
