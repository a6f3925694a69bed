//! The Identity and Node services. Staging makes sure the dataset's FUSE
//! mount exists on this node (labelling the node so the runtime's FUSE
//! DaemonSet comes) and records it; publishing binds the FUSE mount (or a
//! sub-path of it) into the pod. Nothing is mounted at the staging path:
//! the kubelet refuses to unstage while another mount shares the staging
//! path's device, and every target does. What is staged and published is
//! kept in a state file, so a restarted plugin still knows which mounts to
//! repair and which labels to drop.

use crate::mounts;
use crate::proto as pb;
use crate::validate;
use crate::{Error, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

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

/// A staged volume, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    pub volume_id: String,
    pub mount_path: PathBuf,
    /// The node label that brought the FUSE pod here, if any.
    pub fuse_label: Option<String>,
    /// Drop the label when the last volume using it is unstaged.
    pub on_demand: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub volume_id: String,
    pub staging: PathBuf,
    pub sub_path: Option<String>,
    pub read_only: bool,
    /// The pod the kubelet published for (with `podInfoOnMount`), so a
    /// repair can tell its owner.
    #[serde(default)]
    pub pod: Option<PodRef>,
}

/// A pod, as the kubelet names it in a publish request's volume context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    fn from_context(context: &std::collections::HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| context.get(k).filter(|v| !v.is_empty()).cloned();
        Some(PodRef {
            namespace: get("csi.storage.k8s.io/pod.namespace")?,
            name: get("csi.storage.k8s.io/pod.name")?,
            uid: get("csi.storage.k8s.io/pod.uid")?,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub staged: BTreeMap<PathBuf, Staged>,
    pub published: BTreeMap<PathBuf, Published>,
}

/// What the plugin asks of the Kubernetes API: node labels (set when a
/// volume is staged, removed when unstaged) and Events.
pub trait NodeApi: Send + Sync {
    fn set_label(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<()>>;
    /// Tells a pod's owner that its mount was broken and is back.
    fn mount_repaired<'a>(
        &'a self,
        pod: &'a PodRef,
        note: String,
    ) -> futures::future::BoxFuture<'a, Result<()>>;
}

/// This node, through the Kubernetes API.
pub struct KubeNode {
    pub client: kube::Client,
    pub node: String,
    pub recorder: kube::runtime::events::Recorder,
}

impl KubeNode {
    pub fn new(client: kube::Client, node: String) -> Self {
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "csi.weir.io".into(),
                instance: Some(node.clone()),
            },
        );
        KubeNode {
            client,
            node,
            recorder,
        }
    }
}

impl NodeApi for KubeNode {
    fn mount_repaired<'a>(
        &'a self,
        pod: &'a PodRef,
        note: String,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        use kube::runtime::events::{Event, EventType};
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        };
        Box::pin(async move {
            let event = Event {
                type_: EventType::Normal,
                reason: "MountRecovered".into(),
                note: Some(note),
                action: "Rebind".into(),
                secondary: None,
            };
            self.recorder
                .publish(&event, &reference)
                .await
                .map_err(|e| Error::Unavailable(format!("recording an event: {e}")))
        })
    }

    fn set_label(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<()>> {
        use k8s_openapi::api::core::v1::Node;
        use kube::api::{Patch, PatchParams};
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        Box::pin(async move {
            let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
            nodes
                .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| Error::Unavailable(format!("labelling node {}: {e}", self.node)))?;
            Ok(())
        })
    }
}

/// What `/metrics` shows of the plugin.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub recoveries: Counter,
    pub takeovers: Counter,
    pub recovery_failures: Counter,
    pub staged: Gauge,
    pub published: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "weir_csi_mount_recoveries",
            "Mounts re-bound after their FUSE daemon came back",
            self.recoveries.clone(),
        );
        registry.register(
            "weir_csi_fuse_takeovers",
            "FUSE restarts that took over a live mount held here (readers waited, none failed)",
            self.takeovers.clone(),
        );
        registry.register(
            "weir_csi_mount_recovery_failures",
            "Attempts to re-bind a broken mount that failed",
            self.recovery_failures.clone(),
        );
        registry.register(
            "weir_csi_staged_volumes",
            "Volumes staged on this node",
            self.staged.clone(),
        );
        registry.register(
            "weir_csi_published_volumes",
            "Volumes published into pods on this node",
            self.published.clone(),
        );
    }
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
    fn fuse_waiting(&self, mount_path: &Path) -> bool {
        self.holder.get().is_some_and(|h| h.waiting(mount_path))
    }

    pub fn state(&self) -> State {
        self.state.lock().expect("state").clone()
    }

    /// Changes the state and writes it (to a temp file, then renamed).
    fn update(&self, f: impl FnOnce(&mut State)) -> Result<()> {
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

    fn staging_path(&self, raw: &str) -> Result<PathBuf> {
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
    fn mount_path(&self, context: &std::collections::HashMap<String, String>) -> Result<PathBuf> {
        let raw = context.get("mountPath").ok_or_else(|| {
            Error::InvalidArgument("volume attribute mountPath is required".into())
        })?;
        validate::under(raw, &self.config.mount_root, "volume attribute mountPath")
    }

    /// Clears a dead FUSE mount, then waits for the FUSE pod's mount.
    async fn wait_for_fuse(&self, mount_path: &Path) -> Result<()> {
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

    fn check_capability(cap: Option<&pb::VolumeCapability>) -> Result<bool> {
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
    fn bind_source(staged: &Staged, sub_path: Option<&str>) -> Result<PathBuf> {
        match sub_path {
            Some(sub) => validate::sub_path(&staged.mount_path, sub),
            None => Ok(staged.mount_path.clone()),
        }
    }

    pub async fn stage(&self, r: pb::NodeStageVolumeRequest) -> Result<()> {
        let volume_id = validate::volume_id(&r.volume_id)?.to_owned();
        let staging = self.staging_path(&r.staging_target_path)?;
        Self::check_capability(r.volume_capability.as_ref())?;
        let mount_path = self.mount_path(&r.volume_context)?;
        let fuse_label = match r.volume_context.get("fuseLabel") {
            Some(l) => Some(validate::fuse_label(l)?.to_owned()),
            None => None,
        };
        let on_demand = r
            .volume_context
            .get("cleanPolicy")
            .is_none_or(|p| p == "OnDemand");
        let _op = self.ops.lock().await;
        if let (Some(label), Some(api)) = (&fuse_label, &self.api) {
            api.set_label(label, Some("true")).await?;
        }
        self.wait_for_fuse(&mount_path).await?;
        std::fs::create_dir_all(&staging).map_err(|source| Error::Io {
            what: "creating the staging path",
            path: staging.clone(),
            source,
        })?;
        // A bind left here by an earlier version of the plugin would keep
        // the kubelet from ever unstaging.
        mounts::unmount_all(&staging)?;
        tracing::info!(volume = %volume_id, staging = %staging.display(), "staged");
        self.update(|s| {
            s.staged.insert(
                staging.clone(),
                Staged {
                    volume_id,
                    mount_path,
                    fuse_label,
                    on_demand,
                },
            );
        })
    }

    pub async fn unstage(&self, r: pb::NodeUnstageVolumeRequest) -> Result<()> {
        validate::volume_id(&r.volume_id)?;
        let staging = self.staging_path(&r.staging_target_path)?;
        let _op = self.ops.lock().await;
        mounts::unmount_all(&staging)?;
        let _ = std::fs::remove_dir(&staging);
        let gone = self.state().staged.get(&staging).cloned();
        tracing::info!(volume = %r.volume_id, staging = %staging.display(), "unstaged");
        self.update(|s| {
            s.staged.remove(&staging);
        })?;
        if let Some(gone) = &gone
            && !self.uses_mount(&gone.mount_path)
        {
            if let Some(holder) = self.holder.get() {
                holder.forget(&gone.mount_path);
            }
            // A FUSE process that left its mount to a holder which then went
            // away (or a FUSE process that died) leaves a dead mount that
            // nothing else unmounts once no volume needs it: its FUSE pod
            // leaves this node rather than coming back to clear it.
            if mounts::is_broken(&gone.mount_path) {
                tracing::info!(path = %gone.mount_path.display(), "unmounting a dead FUSE mount no volume uses");
                mounts::unmount(&gone.mount_path)?;
            }
        }
        // The FUSE pod leaves this node once no staged volume needs it.
        if let Some(Staged {
            fuse_label: Some(label),
            on_demand: true,
            ..
        }) = gone
        {
            let still_used = self
                .state()
                .staged
                .values()
                .any(|s| s.fuse_label.as_deref() == Some(&label));
            if !still_used && let Some(api) = &self.api {
                api.set_label(&label, None).await?;
                tracing::info!(%label, "no staged volume needs the FUSE pod here: label removed");
            }
        }
        Ok(())
    }

    pub async fn publish(&self, r: pb::NodePublishVolumeRequest) -> Result<()> {
        let volume_id = validate::volume_id(&r.volume_id)?.to_owned();
        if r.target_path.is_empty() {
            return Err(Error::InvalidArgument("target path is required".into()));
        }
        let target = validate::target_path(&r.target_path, &self.config.kubelet_root)?;
        let staging = self.staging_path(&r.staging_target_path)?;
        let cap_read_only = Self::check_capability(r.volume_capability.as_ref())?;
        let read_only = r.readonly || cap_read_only;
        let _op = self.ops.lock().await;
        let Some(staged) = self.state().staged.get(&staging).cloned() else {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume_id} is not staged at {}",
                staging.display()
            )));
        };
        if self.fuse_waiting(&staged.mount_path) {
            // Resolving the sub-path would block until the next FUSE process
            // takes the mount over, with every other volume call waiting.
            return Err(Error::Unavailable(format!(
                "the FUSE daemon of volume {volume_id} is restarting; try again"
            )));
        }
        let pod = PodRef::from_context(&r.volume_context);
        let sub_path = r
            .volume_context
            .get("subPath")
            .filter(|s| !s.is_empty())
            .cloned();
        let source = Self::bind_source(&staged, sub_path.as_deref())?;
        std::fs::create_dir_all(&target).map_err(|source| Error::Io {
            what: "creating the target path",
            path: target.clone(),
            source,
        })?;
        match mounts::mounted_at(&target)? {
            Some(m) if m.read_only == read_only && !mounts::is_broken(&target) => {}
            Some(m) if m.read_only == read_only => mounts::bind(&source, &target, read_only)?,
            Some(_) => {
                mounts::unmount_all(&target)?;
                mounts::bind(&source, &target, read_only)?;
            }
            None => mounts::bind(&source, &target, read_only)?,
        }
        tracing::info!(volume = %volume_id, target = %target.display(), read_only, "published");
        self.update(|s| {
            s.published.insert(
                target.clone(),
                Published {
                    volume_id,
                    staging,
                    sub_path,
                    read_only,
                    pod,
                },
            );
        })
    }

    pub async fn unpublish(&self, r: pb::NodeUnpublishVolumeRequest) -> Result<()> {
        validate::volume_id(&r.volume_id)?;
        if r.target_path.is_empty() {
            return Err(Error::InvalidArgument("target path is required".into()));
        }
        let target = validate::target_path(&r.target_path, &self.config.kubelet_root)?;
        let _op = self.ops.lock().await;
        mounts::unmount_all(&target)?;
        // Only the now empty mount point is removed, never its contents.
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "removing the target path",
                    path: target,
                    source,
                });
            }
        }
        tracing::info!(volume = %r.volume_id, target = %target.display(), "unpublished");
        self.update(|s| {
            s.published.remove(&target);
        })
    }

    pub fn stats(
        &self,
        r: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse> {
        validate::volume_id(&r.volume_id)?;
        if r.volume_path.is_empty() {
            return Err(Error::InvalidArgument("volume path is required".into()));
        }
        let path = PathBuf::from(&r.volume_path);
        // Asked first: a look at a mount that waits for its FUSE process
        // would block until the next one takes it over.
        // The state lock is let go before the holder is asked: the holder
        // asks `uses_mount` (which takes the state lock) with its own lock
        // held, so holding them the other way round here could deadlock.
        let mount_path = {
            let state = self.state.lock().expect("state");
            state
                .published
                .get(&path)
                .map(|p| &p.staging)
                .or(state.staged.contains_key(&path).then_some(&path))
                .and_then(|staging| state.staged.get(staging))
                .map(|s| s.mount_path.clone())
        };
        let waiting = mount_path.is_some_and(|m| self.fuse_waiting(&m));
        if waiting {
            return Ok(pb::NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: "the FUSE daemon is restarting; reads wait for it".into(),
                }),
            });
        }
        if !mounts::exists(&path) {
            return Err(Error::NotFound(format!(
                "volume path {} does not exist",
                path.display()
            )));
        }
        if mounts::is_broken(&path) {
            return Ok(pb::NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: "the FUSE mount is gone (being recovered)".into(),
                }),
            });
        }
        let (total, free, inodes, inodes_free) = mounts::usage(&path)?;
        let usage = |unit: pb::volume_usage::Unit, total: u64, free: u64| pb::VolumeUsage {
            available: free as i64,
            total: total as i64,
            used: total.saturating_sub(free) as i64,
            unit: unit as i32,
        };
        Ok(pb::NodeGetVolumeStatsResponse {
            usage: vec![
                usage(pb::volume_usage::Unit::Bytes, total, free),
                usage(pb::volume_usage::Unit::Inodes, inodes, inodes_free),
            ],
            volume_condition: Some(pb::VolumeCondition {
                abnormal: false,
                message: String::new(),
            }),
        })
    }

    /// Re-binds every staged and published mount whose source died, once
    /// the FUSE mount it comes from is back. Returns how many it repaired.
    pub async fn repair(&self) -> usize {
        let _op = self.ops.lock().await;
        let state = self.state();
        let mut repaired = 0;
        let fail = |what: &Path, e: Error| {
            tracing::warn!(path = %what.display(), error = %e, "could not repair a mount");
            self.metrics.recovery_failures.inc();
        };
        let held = self.holder.get().map(|h| h.held()).unwrap_or_default();
        for (staging, staged) in &state.staged {
            if self.fuse_waiting(&staged.mount_path) {
                // Alive and held: nothing to repair, and a look would block
                // until the next FUSE process takes it over.
                continue;
            }
            // A FUSE process took the held mount over from its predecessor:
            // nothing broke, but the pods are told their daemon restarted.
            let generation = held
                .iter()
                .find(|h| h.mount_point == staged.mount_path)
                .map(|h| h.generation);
            let taken_over = generation.is_some_and(|g| {
                let mut seen = self.fuse_generations.lock().expect("generations");
                seen.insert(staged.mount_path.clone(), g)
                    .is_some_and(|before| before < g)
            });
            if taken_over {
                self.metrics.takeovers.inc();
                for p in state.published.values().filter(|p| p.staging == *staging) {
                    tracing::info!(volume = %p.volume_id, "a restarted FUSE daemon took over the live mount");
                    if let (Some(pod), Some(api)) = (&p.pod, &self.api) {
                        let note = format!(
                            "the FUSE daemon of volume {} restarted and took over the live mount: reads waited for it, none failed",
                            p.volume_id
                        );
                        if let Err(e) = api.mount_repaired(pod, note).await {
                            tracing::warn!(error = %e, pod = %pod.name, "could not record the takeover");
                        }
                    }
                }
            }
            let healthy_source = mounts::fuse_mounted(&staged.mount_path).unwrap_or(false)
                && !mounts::is_broken(&staged.mount_path);
            if !healthy_source {
                continue;
            }
            // A new FUSE mount (a new device) under a staged volume: its
            // daemon restarted. When it was stacked on the dead mount, the
            // host's shared mounts carry it into the pods' targets (peers of
            // the dead one) by themselves; either way the pods are told
            // their mount is back.
            let device = mounts::device(&staged.mount_path);
            let restarted = {
                let mut seen = self.fuse_devices.lock().expect("fuse devices");
                let before = match device {
                    Some(d) => seen.insert(staging.clone(), d),
                    None => seen.get(staging).copied(),
                };
                before.is_some() && before != device
            };
            // Repairs stack the new mount on top of the dead one, never
            // unmount first: pods hold copies of their targets (slaves of
            // the host's), and only a mount made on top reaches those
            // copies; an unmounted and re-made target would not.
            for (target, p) in state
                .published
                .iter()
                .filter(|(_, p)| p.staging == *staging)
            {
                let broken = mounts::is_broken(target);
                if broken {
                    let done = Self::bind_source(staged, p.sub_path.as_deref())
                        .and_then(|src| mounts::bind(&src, target, p.read_only));
                    if let Err(e) = done {
                        fail(target, e);
                        continue;
                    }
                    tracing::info!(target = %target.display(), volume = %p.volume_id, "re-bound a mount after its FUSE daemon came back");
                } else if restarted && !mounts::is_broken(target) {
                    tracing::info!(target = %target.display(), volume = %p.volume_id, "a mount is back after its FUSE daemon restarted");
                } else {
                    continue;
                }
                repaired += 1;
                if let (Some(pod), Some(api)) = (&p.pod, &self.api) {
                    let note = format!(
                        "the FUSE daemon of volume {} restarted; the mount at {} works again{}",
                        p.volume_id,
                        target.display(),
                        if broken { " (re-bound)" } else { "" }
                    );
                    if let Err(e) = api.mount_repaired(pod, note).await {
                        tracing::warn!(error = %e, pod = %pod.name, "could not record the repair");
                    }
                }
            }
        }
        self.metrics.recoveries.inc_by(repaired as u64);
        repaired
    }
}

/// The gRPC face of the services.
#[derive(Debug, Clone)]
pub struct Plugin(pub Arc<NodeService>);

#[tonic::async_trait]
impl pb::identity_server::Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _r: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _r: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        // No controller service: datasets' PVs are made by the operator.
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _r: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for Plugin {
    async fn controller_get_capabilities(
        &self,
        _r: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        // One UNKNOWN entry: "no capability", as a list a CO can tell from
        // an absent answer (an empty list does not survive the wire).
        use pb::controller_service_capability::{Rpc, Type, rpc};
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: vec![pb::ControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::Unknown as i32,
                })),
            }],
        }))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for Plugin {
    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_stage_volume(
        &self,
        r: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        self.0.stage(r.into_inner()).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_unstage_volume(
        &self,
        r: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        self.0.unstage(r.into_inner()).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_publish_volume(
        &self,
        r: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        self.0.publish(r.into_inner()).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %r.get_ref().volume_id))]
    async fn node_unpublish_volume(
        &self,
        r: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        self.0.unpublish(r.into_inner()).await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        Ok(Response::new(self.0.stats(r.into_inner())?))
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use pb::node_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| pb::NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(rpc::Type::StageUnstageVolume),
                cap(rpc::Type::GetVolumeStats),
                cap(rpc::Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _r: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.0.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(pb::Topology {
                segments: [(TOPOLOGY_KEY.to_owned(), self.0.config.node_id.clone())].into(),
            }),
        }))
    }
}
