//! Weir's parts as the Kubernetes suites run them: an S3 server the pods
//! can reach, the operator as a process watching one test namespace, and
//! the Helm chart installed in a test namespace.

use crate::{Bed, profile_dir};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use weir_testkit::ChildGuard;

/// The node's address on the pod bridge: pods reach host processes there.
pub const NODE_IP: &str = "10.88.0.1";

pub use weir_testkit::{bytes, free_port};

/// A moto S3 server on the pod bridge with one bucket; stopped on drop.
pub struct BridgeS3 {
    server: weir_testkit::S3Server,
    pub endpoint: String,
    pub bucket: String,
}

impl BridgeS3 {
    pub fn start(bucket: &str) -> anyhow::Result<Self> {
        let server = weir_testkit::S3Server::start(NODE_IP, 0, bucket)?;
        Ok(BridgeS3 {
            endpoint: server.endpoint.clone(),
            bucket: bucket.into(),
            server,
        })
    }

    /// Stores `body` as `key` in the bucket.
    pub fn put(&self, key: &str, body: &[u8]) -> anyhow::Result<()> {
        Ok(self.server.put(key, body)?)
    }
}

/// `weir-operator` of this build, watching one namespace, logging to a
/// file; killed on drop.
pub struct OperatorProcess {
    child: Option<ChildGuard>,
    pub log: PathBuf,
    pub metrics: String,
    args: Vec<String>,
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl OperatorProcess {
    pub fn start(bed: &Bed, namespace: &str, identity: &str) -> anyhow::Result<Self> {
        let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let log = std::env::temp_dir().join(format!("weir-operator-{namespace}-{identity}.log"));
        let args = vec![
            "--kubeconfig".into(),
            bed.kubeconfig.to_string_lossy().into_owned(),
            "--image".into(),
            "weir.io/weir:dev".into(),
            "--image-pull-policy".into(),
            "Never".into(),
            "--watch-namespace".into(),
            namespace.into(),
            "--lease-namespace".into(),
            namespace.into(),
            "--identity".into(),
            identity.into(),
            "--lease-seconds".into(),
            "6".into(),
            "--metrics-listen".into(),
            metrics.clone(),
        ];
        let mut op = OperatorProcess {
            child: None,
            log,
            metrics,
            args,
        };
        op.spawn()?;
        Ok(op)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(profile_dir().join("weir-operator"))
            .args(&self.args)
            .env("RUST_LOG", "info,weir_operator=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(ChildGuard::new(child));
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Stops with SIGTERM (a clean exit releases the Lease).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` page.
    pub fn scrape(&self) -> anyhow::Result<String> {
        http_get(&self.metrics, "/metrics")
            .ok_or_else(|| anyhow::anyhow!("no /metrics at {}", self.metrics))
    }
}

/// One read a `PodReader` made: when it started (since the reader began)
/// and what went wrong, if anything.
pub type TimedRead = (Duration, Result<(), String>);

/// Reads a file in a pod again and again (`kubectl exec ... sha256sum`,
/// the node's page cache dropped first so each read reaches the mount)
/// until stopped, checking its SHA-256 every time.
pub struct PodReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<TimedRead>>,
}

impl PodReader {
    pub fn start(bed: &Bed, namespace: &str, pod: &str, path: &str, sha256: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (bed, namespace, pod, path, want) = (
            bed.clone(),
            namespace.to_owned(),
            pod.to_owned(),
            path.to_owned(),
            sha256.to_owned(),
        );
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut reads = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
                let at = started.elapsed();
                let read = bed
                    .kubectl(&["-n", &namespace, "exec", &pod, "--", "sha256sum", &path])
                    .map_err(|e| e.to_string())
                    .and_then(|out| {
                        if out.starts_with(&want) {
                            Ok(())
                        } else {
                            Err(format!("wrong bytes: {out}"))
                        }
                    });
                reads.push((at, read));
            }
            reads
        });
        PodReader { stop, thread }
    }

    /// Stops and returns every read made.
    pub fn stop(self) -> Vec<TimedRead> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("pod reader thread")
    }
}

/// The body of a plain HTTP/1.1 GET (metrics, health pages), or `None`
/// when the server does not answer in 5 s.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

/// `charts/weir` installed as release `weir` in a test's namespace, its
/// operator watching only that namespace. The chart's cluster-wide objects
/// (CSIDriver, ClusterRoles) are singletons, so what an earlier failed run
/// left of them is removed first. Uninstalled on drop.
pub struct HelmRelease {
    bed: Bed,
    pub namespace: String,
    installed: bool,
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        if self.installed {
            // The release's pods go with it: their logs are kept for a
            // failed test's report.
            let logs = self.bed.kubectl(&[
                "logs",
                "-n",
                &self.namespace,
                "-l",
                "app.kubernetes.io/name=weir",
                "--all-containers",
                "--prefix",
                "--tail=400",
            ]);
            let dir = self
                .bed
                .repo
                .join("target/e2e-artifacts")
                .join(&self.namespace);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(
                dir.join("release-pods.log"),
                logs.unwrap_or_else(|e| e.to_string()),
            );
            let _ = self.helm(&["uninstall", "weir", "--wait", "--timeout", "2m"]);
        }
    }
}

impl HelmRelease {
    /// `helm install` with the test bed's image and `--set` pairs; waits
    /// until the operator and the CSI plugin are ready.
    pub fn install(bed: &Bed, namespace: &str, sets: &[&str]) -> anyhow::Result<Self> {
        Self::clear_leftovers(bed)?;
        let mut release = HelmRelease {
            bed: bed.clone(),
            namespace: namespace.into(),
            installed: false,
        };
        release.apply("install", sets)?;
        release.installed = true;
        Ok(release)
    }

    /// The cluster-wide objects a release in a namespace deleted since
    /// (a failed test) left behind.
    pub fn clear_leftovers(bed: &Bed) -> anyhow::Result<()> {
        for kind in [
            "csidriver",
            "clusterrole",
            "clusterrolebinding",
            "mutatingwebhookconfiguration",
        ] {
            bed.kubectl(&[
                "delete",
                kind,
                "-l",
                "app.kubernetes.io/name=weir",
                "--ignore-not-found",
            ])?;
        }
        Ok(())
    }

    /// The release `weir` someone else installed in `namespace`.
    pub fn adopt(bed: &Bed, namespace: &str) -> Self {
        HelmRelease {
            bed: bed.clone(),
            namespace: namespace.into(),
            installed: true,
        }
    }

    /// `helm upgrade` of the release with more `--set` pairs.
    pub fn upgrade(&self, sets: &[&str]) -> anyhow::Result<String> {
        self.apply("upgrade", sets)
    }

    /// `helm upgrade --reuse-values` with these `--set` pairs only.
    pub fn upgrade_reusing(&self, sets: &[&str]) -> anyhow::Result<String> {
        let chart = self.bed.repo.join("charts/weir");
        let chart = chart.to_string_lossy();
        let mut args = vec![
            "upgrade",
            "weir",
            &chart,
            "--reuse-values",
            "--wait",
            "--timeout",
            "4m",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        self.helm(&args)
    }

    fn apply(&self, verb: &str, sets: &[&str]) -> anyhow::Result<String> {
        let chart = self.bed.repo.join("charts/weir");
        let mut args = vec![
            verb.to_owned(),
            "weir".into(),
            chart.to_string_lossy().into_owned(),
            "--wait".into(),
            "--timeout".into(),
            "4m".into(),
            "--set".into(),
            "image.pullPolicy=Never".into(),
            "--set".into(),
            format!("operator.watchNamespace={}", self.namespace),
        ];
        for s in sets {
            args.push("--set".into());
            args.push((*s).into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.helm(&args)
    }

    /// Uninstalls and waits for the release's pods to go.
    pub fn uninstall(mut self) -> anyhow::Result<String> {
        self.installed = false;
        self.helm(&["uninstall", "weir", "--wait", "--timeout", "3m"])
    }

    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(self.bed.bin.join("helm"))
            .args(args)
            .args(["--namespace", &self.namespace])
            .arg("--kubeconfig")
            .arg(&self.bed.kubeconfig)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
