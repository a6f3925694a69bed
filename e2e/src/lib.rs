//! End-to-end harness. Brings the test-bed cluster up once per test run (or
//! reuses a running one), hands each test a `kube::Client` and a namespace of
//! its own, waits on conditions with deadlines, and when a test fails dumps
//! the pods' logs, the events and the objects of its namespace.

pub mod cache;
pub mod nodes;
pub mod pods;
pub mod weir;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Failures of the harness itself (as opposed to assertions in tests).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{command} failed ({status}):\n{stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cluster set-up failed earlier in this run: {0}")]
    SetUpFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Paths of the test bed, as `e2e/cluster/lib.sh` defines them.
#[derive(Debug, Clone)]
pub struct Bed {
    pub repo: PathBuf,
    pub bin: PathBuf,
    pub lab: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Bed {
    pub fn from_env() -> Self {
        // The run-time value first: builds of another checkout sharing the
        // target directory can leave a compile-time path that is not ours.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let repo = manifest.parent().expect("workspace root").to_path_buf();
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        let cache = std::env::var_os("WEIR_CACHE")
            .map(PathBuf::from)
            .unwrap_or(home.join(".cache/weir"));
        let lab = std::env::var_os("WEIR_LAB")
            .map(PathBuf::from)
            .unwrap_or("/var/lib/weir-lab".into());
        Bed {
            repo,
            bin: cache.join("bin"),
            kubeconfig: lab.join("admin.kubeconfig"),
            lab,
        }
    }

    pub fn script(&self, name: &str) -> PathBuf {
        self.repo.join("e2e/cluster").join(name)
    }

    /// Runs a test-bed script and returns its output; a non-zero exit is an
    /// error carrying its stderr.
    pub fn run_script(&self, name: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("bash");
        cmd.arg(self.script(name))
            .args(args)
            .env("WEIR_PROFILE_DIR", profile_dir());
        run(cmd)
    }

    /// `kubectl` against the test bed.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        run(cmd).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        Ok(Client::try_from(config)?)
    }
}

fn run(mut cmd: Command) -> Result<Output> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out)
}

/// The cargo profile directory the running test was built into; the Weir
/// binaries of the same build sit beside it.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf()
}

static CLUSTER_UP: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes sure the cluster is up and runs the images of this build. Called by
/// every e2e test; the work happens once per test process, serialised across
/// processes by a lock file.
pub fn ensure_cluster() -> Result<Bed> {
    let bed = Bed::from_env();
    let outcome = CLUSTER_UP.get_or_init(|| {
        let lock = lock_bed().map_err(|e| e.to_string())?;
        let result = bed
            .run_script("up.sh", &[])
            // Every image the pods need is there (an import is skipped when
            // containerd already has the same content).
            .and_then(|_| bed.run_script("image.sh", &["pause", "weir.io/pause:1"]))
            .and_then(|_| bed.run_script("image.sh", &["weir", "weir.io/weir:dev"]))
            .and_then(|_| bed.run_script("image.sh", &["e2e", "weir.io/e2e:dev"]))
            .map(|_| ())
            .map_err(|e| e.to_string());
        drop(lock);
        result
    });
    outcome.clone().map_err(Error::SetUpFailed)?;
    Ok(bed)
}

/// An exclusive lock on the test bed, held while it is brought up or down.
pub fn lock_bed() -> Result<File> {
    let path = std::env::temp_dir().join("weir-lab.lock");
    let file = File::create(&path).map_err(|source| Error::Spawn {
        command: "lock".into(),
        source,
    })?;
    file.lock().map_err(|source| Error::Spawn {
        command: format!("flock {path:?}"),
        source,
    })?;
    Ok(file)
}

/// Polls `probe` every 250 ms until it yields `Some`, or fails after
/// `timeout` naming `what`. Probe errors are retried: the cluster is allowed
/// to be momentarily unavailable, but not past the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e.to_string()),
        }
        if Instant::now() >= deadline {
            let what = match last_error {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_owned(),
            };
            return Err(Error::Timeout(timeout, what));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies a CRD (server-side, as the test harness) and waits until the
/// apiserver has established it.
pub async fn install_crd(client: &Client, crd: &CustomResourceDefinition) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    crds.patch(
        &name,
        &PatchParams::apply("weir-e2e").force(),
        &Patch::Apply(crd),
    )
    .await?;
    wait_for(
        &format!("CRD {name} established"),
        Duration::from_secs(30),
        || async {
            let c = crds.get(&name).await?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await
}

/// A namespace owned by one test. Dropped after a failure, it first writes
/// what is needed to debug it (pod logs, events, every object as YAML) to
/// stderr and to `target/e2e-artifacts/<namespace>/`; then it is deleted.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    pub bed: Bed,
    passed: bool,
}

/// Runs one e2e test in a namespace of its own on the shared cluster. When
/// `body` fails or panics, the namespace is dumped before it is deleted.
pub async fn in_namespace(
    test: &str,
    body: impl AsyncFnOnce(&TestNamespace) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    in_namespace_of_length(test, None, body).await
}

/// [`in_namespace`] in a namespace whose name is padded to `length`
/// characters (63 is the longest Kubernetes allows).
pub async fn in_namespace_of_length(
    test: &str,
    length: Option<usize>,
    body: impl AsyncFnOnce(&TestNamespace) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    init_tls();
    let bed = ensure_cluster()?;
    let mut ns = TestNamespace::new(&bed, test, length).await?;
    let result = body(&ns).await;
    ns.passed = result.is_ok();
    result
}

impl TestNamespace {
    pub async fn new(bed: &Bed, test: &str, length: Option<usize>) -> Result<Self> {
        let client = bed.client().await?;
        let suffix = std::process::id() % 100_000;
        let mut name = format!("e2e-{}-", test.replace('_', "-"));
        if let Some(length) = length {
            let pad = length.saturating_sub(name.len() + suffix.to_string().len() + 1);
            name.push_str(&"x".repeat(pad));
            name.push('-');
        }
        name.push_str(&suffix.to_string());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"weir.io/e2e": "true"}}
        }))
        .expect("namespace literal");
        let api: Api<Namespace> = Api::all(client.clone());
        let _ = api.delete(&name, &DeleteParams::default()).await;
        wait_for(
            &format!("stale namespace {name} to go"),
            Duration::from_secs(60),
            || async { Ok(api.get_opt(&name).await?.is_none().then_some(())) },
        )
        .await?;
        api.create(&PostParams::default(), &ns).await?;
        wait_for(
            &format!("service account in {name}"),
            Duration::from_secs(30),
            || async {
                let out = bed.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    &name,
                    "-o",
                    "name",
                ]);
                Ok(out.ok().map(|_| ()))
            },
        )
        .await?;
        Ok(Self {
            name,
            client,
            bed: bed.clone(),
            passed: false,
        })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// `kubectl -n <this namespace> ...` (the flag goes first, so that it
    /// never lands after a `--`).
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.bed.kubectl(&all)
    }

    fn dump(&self) {
        let dir = self.bed.repo.join("target/e2e-artifacts").join(&self.name);
        let _ = std::fs::create_dir_all(&dir);
        let mut report = String::new();
        let sections: [(&str, Vec<&str>); 3] = [
            ("events", vec!["get", "events", "--sort-by=.lastTimestamp"]),
            (
                "objects",
                vec!["get", "all,configmaps,pvc,events", "-o", "yaml"],
            ),
            ("pods", vec!["get", "pods", "-o", "wide"]),
        ];
        for (title, args) in sections {
            let out = self.kubectl(&args).unwrap_or_else(|e| e.to_string());
            let _ = std::fs::write(dir.join(format!("{title}.txt")), &out);
            report.push_str(&format!("==== {title} ====\n{out}\n"));
        }
        let pods = self.kubectl(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]);
        for pod in pods.unwrap_or_default().split_whitespace() {
            let logs = self
                .kubectl(&["logs", pod, "--all-containers", "--tail=200"])
                .unwrap_or_else(|e| e.to_string());
            let _ = std::fs::write(dir.join(format!("{pod}.log")), &logs);
            report.push_str(&format!("==== logs of {pod} ====\n{logs}\n"));
        }
        eprintln!("{report}\n(also in {})", dir.display());
    }
}

impl TestNamespace {
    /// A test that stopped half way leaves Weir objects whose finalizers no
    /// operator will run any more: drop the finalizers, and remove what
    /// the operator would have (the PVs and node labels of this namespace),
    /// so the namespace can go.
    fn release_weir_objects(&self) {
        let kinds = "datasets.data.weir.io,cacheruntimes.data.weir.io,dataloads.data.weir.io";
        let names = self
            .kubectl(&["get", kinds, "-o", "name"])
            .unwrap_or_default();
        for obj in names.split_whitespace() {
            let _ = self.kubectl(&[
                "patch",
                obj,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        // Each PV of the namespace names its FUSE node label (a long one is
        // cut and hashed, so it is read, not rebuilt from the names).
        let pvs = self
            .bed
            .kubectl(&[
                "get",
                "pv",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name} {.spec.csi.volumeAttributes.fuseLabel}{"\n"}{end}"#,
            ])
            .unwrap_or_default();
        for line in pvs.lines() {
            let mut fields = line.split_whitespace();
            let (Some(pv), label) = (fields.next(), fields.next()) else {
                continue;
            };
            if !pv.starts_with(&format!("{}-", self.name)) {
                continue;
            }
            if let Some(label) = label {
                let _ = self
                    .bed
                    .kubectl(&["label", "nodes", "--all", &format!("{label}-")]);
            }
            let _ = self.bed.kubectl(&["delete", "pv", pv, "--wait=false"]);
        }
        // Labels whose PV is already gone, when they carry the names whole.
        let labels = self
            .bed
            .kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.labels}"])
            .unwrap_or_default();
        let prefix = format!("weir.io/fuse-{}-", self.name);
        let mut rest = labels.as_str();
        while let Some(at) = rest.find(&prefix) {
            let key: String = rest[at..].chars().take_while(|c| *c != '"').collect();
            let _ = self
                .bed
                .kubectl(&["label", "nodes", "--all", &format!("{key}-")]);
            rest = &rest[at + key.len()..];
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if !self.passed || std::thread::panicking() {
            self.dump();
        }
        self.release_weir_objects();
        let _ = self
            .bed
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Installs the process-wide TLS provider (kube uses rustls); idempotent.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a stopped test bed must not leave behind: processes, mounts, network
/// namespaces, the pod bridge, pod cgroups, state directories. Empty when
/// clean; otherwise one line per leftover.
pub fn leftovers(bed: &Bed) -> Vec<String> {
    let mut found = Vec::new();
    let bin = bed.bin.to_string_lossy().into_owned();
    let lab = bed.lab.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with(&bin) || cmdline.contains(&format!("{lab}/")) {
            found.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let target = line.split_whitespace().nth(4).unwrap_or_default();
        if [
            "/var/lib/kubelet",
            "/var/lib/weir",
            "/run/containerd",
            "/run/netns/cni-",
        ]
        .iter()
        .chain([&lab.as_str()])
        .any(|p| target.starts_with(p))
        {
            found.push(format!("mount {target}"));
        }
    }
    let netns = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten();
    for ns in netns.filter(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("cni-") || name.starts_with("weir-node-")
    }) {
        found.push(format!("network namespace {}", ns.path().display()));
    }
    for bridge in ["weir0", "weirn0"] {
        if Path::new("/sys/class/net").join(bridge).exists() {
            found.push(format!("bridge {bridge}"));
        }
    }
    for dir in [
        bed.lab.as_path(),
        Path::new("/run/containerd"),
        Path::new("/var/lib/cni"),
    ] {
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
    }
    for sub in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for entry in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "kubepods" || name.starts_with("weir-node-") {
                found.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    found
}
