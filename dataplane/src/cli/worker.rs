//! `weir worker` and `weir fuse` settings.

use super::CliError;
use crate::client::ClientConfig;
use crate::fuse::FuseConfig;
use crate::worker::WorkerConfig;
use crate::worker::store::{EvictionPolicy, TierConfig};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Parses `1048576`, `64KiB`, `512MiB`, `2GiB`, `1TiB` (also KB/MB/GB/TB
/// as powers of 1000).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {raw:?} does not start with a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("size {raw:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {raw:?} is too large"))
}

/// One tier from `NAME:DIR[,DIR...]:QUOTA[:HIGH:LOW]`; the quota is split
/// evenly over the directories.
pub fn parse_tier(raw: &str) -> Result<Vec<TierConfig>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    if !(parts.len() == 3 || parts.len() == 5) {
        return Err(format!(
            "tier {raw:?} is not NAME:DIR[,DIR...]:QUOTA[:HIGH:LOW]"
        ));
    }
    let name = parts[0].to_ascii_uppercase();
    if !matches!(name.as_str(), "MEM" | "SSD" | "HDD") {
        return Err(format!("tier {raw:?}: name must be MEM, SSD or HDD"));
    }
    let dirs: Vec<&str> = parts[1].split(',').filter(|d| !d.is_empty()).collect();
    if dirs.is_empty() {
        return Err(format!("tier {raw:?} has no directory"));
    }
    let quota = parse_size(parts[2])?;
    let (high, low) = if parts.len() == 5 {
        let f = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("tier {raw:?}: watermark {s:?} is not a number"))
        };
        (f(parts[3])?, f(parts[4])?)
    } else {
        (0.95, 0.8)
    };
    Ok(dirs
        .iter()
        .map(|d| TierConfig {
            name: name.clone(),
            dir: PathBuf::from(d),
            quota: quota / dirs.len() as u64,
            high,
            low,
        })
        .collect())
}

/// `weir worker`: flags, else environment, else the `--config` YAML file.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long, env = "WEIR_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Masters as host:port, comma separated.
    #[arg(long, env = "WEIR_MASTERS", value_delimiter = ',')]
    pub masters: Vec<String>,
    /// Host clients reach this worker at [default: 127.0.0.1].
    #[arg(long, env = "WEIR_WORKER_HOST")]
    pub host: Option<String>,
    /// The node this worker runs on, as reports show it (in Kubernetes,
    /// the pod's `spec.nodeName`) [default: this machine's host name].
    #[arg(long, env = "WEIR_NODE_NAME")]
    pub node: Option<String>,
    /// [default: 0.0.0.0:19300]
    #[arg(long, env = "WEIR_WORKER_DATA_LISTEN")]
    pub data_listen: Option<SocketAddr>,
    /// `/metrics` and `/healthz` [default: 0.0.0.0:19301]
    #[arg(long, env = "WEIR_WORKER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// A tier as NAME:DIR[,DIR...]:QUOTA[:HIGH:LOW], highest first
    /// (e.g. MEM:/dev/shm/weir:4GiB, SSD:/mnt/ssd1,/mnt/ssd2:200GiB:0.9:0.7).
    #[arg(long = "tier", env = "WEIR_WORKER_TIERS", value_delimiter = ';')]
    pub tiers: Vec<String>,
    /// [default: lru]
    #[arg(long, env = "WEIR_WORKER_EVICTION", value_enum)]
    pub eviction: Option<EvictionPolicy>,
    /// [default: /var/lib/weir/worker]
    #[arg(long, env = "WEIR_WORKER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// [default: 1000]
    #[arg(long, env = "WEIR_WORKER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// A tier directory as the node sees it, DIR=NODE_DIR, when this
    /// worker runs in a container: short-circuit leases then name the
    /// node's path, which clients on the node open [default: the paths
    /// are the node's].
    #[arg(
        long = "tier-host-dir",
        env = "WEIR_WORKER_TIER_HOST_DIRS",
        value_delimiter = ';'
    )]
    pub tier_host_dirs: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    #[serde(default)]
    pub masters: Vec<String>,
    pub host: Option<String>,
    pub node: Option<String>,
    pub data_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tiers: Vec<String>,
    pub eviction: Option<EvictionPolicy>,
    pub state_dir: Option<PathBuf>,
    pub heartbeat_ms: Option<u64>,
}

impl WorkerArgs {
    pub fn config(&self) -> Result<WorkerConfig, CliError> {
        let file: WorkerFile = match &self.config {
            None => WorkerFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })?;
                serde_yaml::from_str(&text)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
            }
        };
        let masters = if self.masters.is_empty() {
            file.masters
        } else {
            self.masters.clone()
        };
        if masters.is_empty() {
            return Err(CliError::Usage(
                "give --masters (or masters: in --config)".into(),
            ));
        }
        let tier_specs = if self.tiers.is_empty() {
            file.tiers
        } else {
            self.tiers.clone()
        };
        if tier_specs.is_empty() {
            return Err(CliError::Usage(
                "give at least one --tier NAME:DIR:QUOTA".into(),
            ));
        }
        let mut tiers = Vec::new();
        for spec in &tier_specs {
            tiers.extend(parse_tier(spec).map_err(CliError::Usage)?);
        }
        Ok(WorkerConfig {
            masters,
            host: self
                .host
                .clone()
                .or(file.host)
                .unwrap_or_else(|| "127.0.0.1".into()),
            node: match self.node.clone().or(file.node) {
                Some(node) => node,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_default(),
            },
            data_listen: self
                .data_listen
                .or(file.data_listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 19300).into()),
            http_listen: self
                .http_listen
                .or(file.http_listen)
                .unwrap_or_else(|| ([0, 0, 0, 0], 19301).into()),
            tiers,
            policy: self.eviction.or(file.eviction).unwrap_or_default(),
            state_dir: self
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/weir/worker".into()),
            heartbeat: Duration::from_millis(
                self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(1000),
            ),
            async_cache_queue: 256,
            async_cache_threads: 4,
            tier_host_dirs: self
                .tier_host_dirs
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.split_once('=')
                        .map(|(dir, host)| (PathBuf::from(dir), PathBuf::from(host)))
                        .ok_or_else(|| {
                            CliError::Usage(format!("--tier-host-dir {s:?} is not DIR=NODE_DIR"))
                        })
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// How a client reaches the cluster's data.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// The host this machine's workers register with (their blocks are
    /// read short-circuit) [default: loopback workers are local].
    #[arg(long, env = "WEIR_CLIENT_HOST", global = true)]
    pub client_host: Option<String>,
    /// Read local workers' blocks over the data port like remote ones.
    #[arg(long, env = "WEIR_NO_SHORT_CIRCUIT", global = true)]
    pub no_short_circuit: bool,
    /// The node this client runs on (in Kubernetes, the pod's
    /// `spec.nodeName`): workers registered with the same node are read
    /// first, and their reads counted as local.
    #[arg(long = "node", env = "WEIR_NODE_NAME", global = true)]
    pub node: Option<String>,
}

impl DataArgs {
    pub fn client_config(&self, masters: Vec<String>, timeout: Duration) -> ClientConfig {
        let mut c = ClientConfig::new(masters);
        c.timeout = timeout;
        c.local_host = self.client_host.clone();
        c.node = self.node.clone();
        c.short_circuit = !self.no_short_circuit;
        c
    }
}

/// `weir fuse`.
#[derive(Debug, Args)]
pub struct FuseArgs {
    #[command(flatten)]
    pub conn: super::ConnArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, env = "WEIR_FUSE_MOUNT_POINT")]
    pub mount_point: PathBuf,
    /// The namespace path to show at the mount point.
    #[arg(long, env = "WEIR_FUSE_SUB_PATH", default_value = "/")]
    pub sub_path: String,
    #[arg(long, env = "WEIR_FUSE_READ_ONLY")]
    pub read_only: bool,
    /// Let every user (not just root) use the mount: pods run as anyone.
    #[arg(long, env = "WEIR_FUSE_ALLOW_OTHER")]
    pub allow_other: bool,
    #[arg(long, env = "WEIR_FUSE_ATTR_TTL_MS", default_value_t = 1000)]
    pub attr_ttl_ms: u64,
    #[arg(long, env = "WEIR_FUSE_THREADS", default_value_t = 4)]
    pub threads: usize,
    /// Never hand cached block files to the kernel (FUSE passthrough).
    #[arg(long, env = "WEIR_FUSE_NO_PASSTHROUGH")]
    pub no_passthrough: bool,
    /// Show every file as owned by this user id [default: the owner the
    /// under-storage keeps (local directories), else root].
    #[arg(long, env = "WEIR_FUSE_UID")]
    pub uid: Option<u32>,
    /// Show every file as owned by this group id [default: as the owner].
    #[arg(long, env = "WEIR_FUSE_GID")]
    pub gid: Option<u32>,
    /// The unix socket of a process that keeps a copy of the mount's
    /// `/dev/fuse` descriptor (the CSI node plugin): a restarted `weir fuse`
    /// takes the live mount back from it instead of remounting, so readers
    /// wait through the restart instead of failing.
    #[arg(long, env = "WEIR_FUSE_FD_HOLDER")]
    pub fd_holder: Option<PathBuf>,
    /// Serve `/metrics` (which way reads came: short-circuit, local,
    /// remote, ufs) and `/healthz` here [default: not served].
    #[arg(long, env = "WEIR_FUSE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl FuseArgs {
    pub fn config(&self) -> FuseConfig {
        FuseConfig {
            client: self.data.client_config(
                self.conn.masters.clone(),
                Duration::from_secs(self.conn.timeout_secs),
            ),
            mount_point: self.mount_point.clone(),
            sub_path: self.sub_path.clone(),
            read_only: self.read_only,
            allow_other: self.allow_other,
            attr_ttl: Duration::from_millis(self.attr_ttl_ms),
            threads: self.threads,
            passthrough: !self.no_passthrough,
            uid: self.uid,
            gid: self.gid,
            fd_holder: self.fd_holder.clone(),
            metrics_listen: self.metrics_listen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Worker {
        #[command(flatten)]
        args: WorkerArgs,
    }

    #[test]
    fn leases_name_the_node_paths_of_mapped_tiers_and_no_others() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "w",
                "--masters",
                "m:1",
                "--tier",
                "MEM:/t0:1GiB",
                "--node",
                "n",
            ];
            argv.extend(extra);
            Worker::try_parse_from(argv).unwrap().args.config()
        };
        let plain = parse(&[]).unwrap();
        let p = std::path::Path::new("/t0/7.data");
        assert_eq!(
            plain.host_view(p),
            Some(p.to_path_buf()),
            "the node's own paths"
        );
        let mapped = parse(&[
            "--tier-host-dir",
            "/t0=/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/tier-0",
        ])
        .unwrap();
        assert_eq!(
            mapped.host_view(p),
            Some(PathBuf::from(
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/tier-0/7.data"
            ))
        );
        assert_eq!(
            mapped.host_view(std::path::Path::new("/t1/7.data")),
            None,
            "an unmapped tier"
        );
        let bad = parse(&["--tier-host-dir", "/t0"]).unwrap_err().to_string();
        assert!(bad.contains("DIR=NODE_DIR"), "{bad}");
    }

    #[test]
    fn sizes_and_tiers_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").unwrap_err().contains("number"));
        assert!(parse_size("3 parsecs").unwrap_err().contains("unit"));
        let t = parse_tier("ssd:/a,/b:10GiB:0.9:0.7").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].name.as_str(), t[0].quota, t[1].low),
            ("SSD", 5 << 30, 0.7)
        );
        assert!(
            parse_tier("NVME:/a:1G")
                .unwrap_err()
                .contains("MEM, SSD or HDD")
        );
        assert!(parse_tier("MEM:/a").unwrap_err().contains("NAME:DIR"));
        assert!(parse_tier("MEM::1G").unwrap_err().contains("no directory"));
    }
}
