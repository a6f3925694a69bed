//! The Identity and Node services. Staging makes sure the dataset's FUSE
//! mount exists on this node (labelling the node so the runtime's FUSE
//! DaemonSet comes) and records it; publishing binds the FUSE mount (or a
//! sub-path of it) into the pod. Nothing is mounted at the staging path:
//! the kubelet refuses to unstage while another mount shares the staging
//! path's device, and every target does. What is staged and published is
//! kept in a state file, so a restarted plugin still knows which mounts to
//! repair and which labels to drop.

mod api;
mod grpc;
mod metrics;
mod repair;
mod state;
mod volumes;

pub use api::{KubeNode, NodeApi};
pub use grpc::Plugin;
pub use metrics::Metrics;
pub use state::{PodRef, Published, Staged, State};

use crate::mounts;
use crate::proto as pb;
use crate::validate;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DRIVER_NAME: &str = "csi.weir.io";
/// Topology key NodeGetInfo reports the node under.
pub const TOPOLOGY_KEY: &str = "topology.csi.weir.io/node";

/// Settings of the node plugin.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    /// The kubelet's root directory; targets live under its `pods/`.
    pub kubelet_root: PathBuf,
    /// FUSE mounts of datasets live below this host directory.
    pub mount_root: PathBuf,
    /// Where staged and published volumes are recorded.
    pub state_file: PathBuf,
    /// How long staging waits for the dataset's FUSE mount.
    pub fuse_wait: Duration,
}

pub struct NodeService {
    pub config: NodeConfig,
    state: Mutex<State>,
    api: Option<Arc<dyn NodeApi>>,
    /// One volume operation at a time (the CO may retry concurrently).
    ops: tokio::sync::Mutex<()>,
    pub metrics: Metrics,
    /// The device of each staged volume's FUSE mount when last seen.
    fuse_devices: Mutex<std::collections::HashMap<PathBuf, u64>>,
    /// Keeps FUSE mounts' `/dev/fuse` descriptors across FUSE restarts.
    holder: std::sync::OnceLock<Arc<weir_handover::Holder>>,
    /// The FUSE generation of each held mount when last seen.
    fuse_generations: Mutex<std::collections::HashMap<PathBuf, u64>>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("config", &self.config)
            .finish()
    }
}

impl NodeService {
    pub fn new(config: NodeConfig, api: Option<Arc<dyn NodeApi>>) -> Result<Self> {
        let state = match std::fs::read(&config.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidArgument(format!("state file {}: {e}", config.state_file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(Error::Io {
                    what: "reading the state file",
                    path: config.state_file.clone(),
                    source,
                });
            }
        };
        Ok(NodeService {
            config,
            state: Mutex::new(state),
            api,
            ops: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            fuse_devices: Mutex::default(),
            holder: std::sync::OnceLock::new(),
            fuse_generations: Mutex::default(),
        })
    }

    /// Holds the `/dev/fuse` descriptors that FUSE processes lodge at
    /// `socket`, each kept while a staged volume uses its mount.
    pub fn hold_fuse_descriptors(self: &Arc<Self>, socket: &Path) -> Result<()> {
        let service = Arc::downgrade(self);
        let holder = weir_handover::Holder::new(move |mount_path| {
            service.upgrade().is_some_and(|s| s.uses_mount(mount_path))
        });
        holder.listen(socket).map_err(|e| Error::Io {
            what: "holding FUSE descriptors at",
            path: socket.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let _ = self.holder.set(holder);
        Ok(())
    }

    /// The mount points whose `/dev/fuse` descriptors are held here.
    pub fn held_fuse_mounts(&self) -> Vec<PathBuf> {
        self.holder
            .get()
            .map(|h| h.held().into_iter().map(|m| m.mount_point).collect())
            .unwrap_or_default()
    }

    /// Whether a staged volume uses the FUSE mount at `mount_path`. The
    /// holder asks this with its lock held: nothing may ask the holder
    /// while it holds the state lock.
    pub fn uses_mount(&self, mount_path: &Path) -> bool {
        let state = self.state.lock().expect("state");
        state.staged.values().any(|s| s.mount_path == mount_path)
    }

    /// Whether the FUSE process of `mount_path` is gone and the held mount
    /// waits for the next one: a stat of it would block until then.
    pub(super) fn fuse_waiting(&self, mount_path: &Path) -> bool {
        self.holder.get().is_some_and(|h| h.waiting(mount_path))
    }

    pub fn state(&self) -> State {
        self.state.lock().expect("state").clone()
    }

    /// Changes the state and writes it (to a temp file, then renamed).
    pub(super) fn update(&self, f: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.state.lock().expect("state");
        f(&mut state);
        self.metrics.staged.set(state.staged.len() as i64);
        self.metrics.published.set(state.published.len() as i64);
        let path = &self.config.state_file;
        let tmp = path.with_extension("tmp");
        let io = |source| Error::Io {
            what: "writing the state file",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&*state).expect("state serialises"),
        )
        .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub(super) fn staging_path(&self, raw: &str) -> Result<PathBuf> {
        if raw.is_empty() {
            return Err(Error::InvalidArgument(
                "staging target path is required".into(),
            ));
        }
        validate::under(raw, &self.config.kubelet_root, "staging target path")
    }

    /// The dataset's FUSE mount named by the volume's attributes; it must
    /// lie below the mount root, so a PV cannot point the plugin at an
    /// arbitrary host directory.
    pub(super) fn mount_path(
        &self,
        context: &std::collections::HashMap<String, String>,
    ) -> Result<PathBuf> {
        let raw = context.get("mountPath").ok_or_else(|| {
            Error::InvalidArgument("volume attribute mountPath is required".into())
        })?;
        validate::under(raw, &self.config.mount_root, "volume attribute mountPath")
    }

    /// Clears a dead FUSE mount, then waits for the FUSE pod's mount.
    pub(super) async fn wait_for_fuse(&self, mount_path: &Path) -> Result<()> {
        let deadline = Instant::now() + self.config.fuse_wait;
        loop {
            if self.fuse_waiting(mount_path) {
                // Its FUSE pod is restarting; the mount is alive.
            } else if mounts::is_broken(mount_path) {
                tracing::warn!(path = %mount_path.display(), "clearing a FUSE mount whose daemon is gone");
                mounts::unmount(mount_path)?;
            } else if mounts::fuse_mounted(mount_path)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "no FUSE mount at {} after {:?}: is the runtime's FUSE pod running on this node?",
                    mount_path.display(),
                    self.config.fuse_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) fn check_capability(cap: Option<&pb::VolumeCapability>) -> Result<bool> {
        let cap =
            cap.ok_or_else(|| Error::InvalidArgument("volume capability is required".into()))?;
        match cap.access_type {
            Some(pb::volume_capability::AccessType::Mount(_)) => {}
            Some(pb::volume_capability::AccessType::Block(_)) => {
                return Err(Error::InvalidArgument(
                    "a dataset is a filesystem: block access is not supported".into(),
                ));
            }
            None => {
                return Err(Error::InvalidArgument(
                    "volume capability has no access type".into(),
                ));
            }
        }
        use pb::volume_capability::access_mode::Mode;
        let mode =
            cap.access_mode.as_ref().map(|m| m.mode()).ok_or_else(|| {
                Error::InvalidArgument("volume capability has no access mode".into())
            })?;
        Ok(matches!(
            mode,
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        ))
    }

    /// What a target binds: the staged FUSE mount, or a sub-path of it
    /// that must stay inside it.
    pub(super) fn bind_source(staged: &Staged, sub_path: Option<&str>) -> Result<PathBuf> {
        match sub_path {
            Some(sub) => validate::sub_path(&staged.mount_path, sub),
            None => Ok(staged.mount_path.clone()),
        }
    }
}
