//! The cluster each test starts, test data with known bytes, and checks.

use crate::common::{Proc, free_port, is_mounted};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::client::{ClientConfig, FileSystem};
use weir::proto::master as pb;
use weir::ufs::{OpendalUfs, Ufs, UfsPath};

pub const BLOCK: u64 = 64 << 20;

/// File contents that differ at every MiB: a random MiB, rotated by the
/// MiB's index, so a block served at the wrong offset cannot match.
pub struct Pattern(pub Vec<u8>);

impl Pattern {
    pub fn new(seed: u64) -> Self {
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

    pub fn fill(&self, mut offset: u64, buf: &mut [u8]) {
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

    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(offset, &mut v);
        v
    }

    pub fn sha256(&self, len: u64) -> String {
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

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn upload(ufs: &dyn Ufs, path: &str, p: &Pattern, len: u64) {
    let mut w = ufs.writer(&UfsPath::parse(path).unwrap()).await.unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(8 << 20) as usize;
        w.write(p.bytes(off, n).into()).await.unwrap();
        off += n as u64;
    }
    w.close().await.unwrap();
}

pub fn s3_ufs(endpoint: &str, bucket: &str, creds: &BTreeMap<String, String>) -> Arc<dyn Ufs> {
    let opts = [("endpoint".to_owned(), endpoint.to_owned())].into();
    Arc::new(OpendalUfs::open(&format!("s3://{bucket}"), &opts, creds).unwrap())
}

/// A master and workers (MEM tiers on tmpfs), killed and cleaned up on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub master_addr: String,
    pub master: Proc,
    pub workers: Vec<Proc>,
    pub tiers: Vec<PathBuf>,
    pub fuses: Vec<(Proc, PathBuf)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let procs = std::iter::once(&self.master)
                .chain(&self.workers)
                .chain(self.fuses.iter().map(|(f, _)| f));
            for p in procs {
                p.print_tail(60);
            }
        }
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
    pub async fn start(workers: usize, tier: &str) -> Self {
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

    pub fn add_worker(&mut self, i: usize, tier: &str) {
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

    pub async fn wait_workers(&self, n: usize) {
        let fs = self.fs();
        wait("workers to register", || async {
            fs.master()
                .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
                .await
                .is_ok_and(|i| i.workers.iter().filter(|w| !w.lost).count() == n)
        })
        .await;
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(vec![self.master_addr.clone()]);
        c.metadata_ttl = Duration::from_millis(100);
        c
    }

    pub fn fs(&self) -> Arc<FileSystem> {
        FileSystem::new(self.client_config()).unwrap()
    }

    /// Mounts a local directory as the under-storage of `path`.
    pub async fn mount_local(&self, path: &str, dir: &Path, read_only: bool) {
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

    pub async fn mount(
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

    pub async fn fuse(&mut self, sub_path: &str, extra: &[&str]) -> PathBuf {
        let mp = self.dir.path().join(format!("mnt{}", self.fuses.len()));
        let mut args = vec![
            "fuse".to_owned(),
            format!("--masters={}", self.master_addr),
            format!("--mount-point={}", mp.display()),
            format!("--sub-path={sub_path}"),
        ];
        if !extra.iter().any(|a| a.starts_with("--attr-ttl-ms")) {
            args.push("--attr-ttl-ms=100".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = Proc::start(&format!("fuse{}", self.fuses.len()), args, self.dir.path());
        let mp2 = mp.clone();
        wait("the FUSE mount", || async { is_mounted(&mp2) }).await;
        self.fuses.push((p, mp.clone()));
        mp
    }

    pub async fn status(&self, path: &str) -> pb::FileInfo {
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

    pub async fn set_pinned(&self, path: &str) {
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

    pub fn tier_files(&self) -> Vec<String> {
        self.tiers
            .iter()
            .flat_map(|t| std::fs::read_dir(t).into_iter().flatten())
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

pub async fn wait<F, Fut>(what: &str, mut ok: F)
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

pub async fn client_sha(fs: &Arc<FileSystem>, path: &str) -> String {
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

pub fn file_sha(path: &Path) -> String {
    read_sha(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

pub fn read_sha(mut f: impl std::io::Read) -> String {
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

/// `weir fs cat path`, as a user runs it.
pub fn fs_cat(c: &Cluster, path: &str) -> std::process::Output {
    std::process::Command::new(crate::common::weir_bin())
        .args(["fs", "--masters", &c.master_addr, "cat", path])
        .output()
        .unwrap()
}

pub fn cat_sha(c: &Cluster, path: &str) -> String {
    let out = fs_cat(c, path);
    assert!(
        out.status.success(),
        "weir fs cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex(&Sha256::digest(&out.stdout))
}
