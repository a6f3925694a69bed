//! The namespace state machine: commands that change the inode tree and the
//! mount table, applied deterministically on every master. A command carries
//! everything that must be the same on every replica (timestamps, UFS
//! listing results); ids are handed out by the apply itself from a counter
//! kept in the store, so replaying the log rebuilds the same tree.

use super::jobs::{
    Job, JobId, JobProgress, JobSpec, JobState, MAX_RETAINED_FINISHED, glob_base, is_glob,
};
use super::metastore::{
    Inode, InodeId, InodeKind, MetaStore, MountInfo, Op, PersistState, ROOT_ID, StoreError,
    WriteType,
};
use crate::path::{PathError, WeirPath};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const META_NEXT_ID: &str = "next_inode_id";
const META_NEXT_JOB_ID: &str = "next_job_id";
/// Copies per block a job may ask for.
pub const MAX_REPLICAS: u32 = 16;
const META_INODE_COUNT: &str = "inode_count";
const META_NEXT_MOUNT_ID: &str = "next_mount_id";
/// Default block size, as in Alluxio: large blocks keep the block count of
/// big files low while a partial read still caches only what it touches.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 20;
/// Block ids are `inode id << BLOCK_INDEX_BITS | index`.
pub const BLOCK_INDEX_BITS: u32 = 24;
/// Seeded inode ids start at or above this; block ids (inode << 24 | index)
/// keep 2^39 ids of room above the highest seed.
pub const SEEDED_IDS_FLOOR: u64 = 1 << 32;
const SEEDED_IDS_SPAN: u64 = (1 << 39) - (1 << 32);

/// A random seed for a new cluster's inode ids.
pub fn random_id_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    SEEDED_IDS_FLOOR + x % SEEDED_IDS_SPAN
}

/// A file system failure, with the gRPC code it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum FsError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("read-only mount: {0}")]
    ReadOnly(String),
    #[error("metadata store: {0}")]
    Store(String),
}

impl From<PathError> for FsError {
    fn from(e: PathError) -> Self {
        FsError::InvalidArgument(e.to_string())
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::Store(e.to_string())
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// Who and when, stamped by the leader when it proposes a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stamp {
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub now_ms: u64,
}

/// One entry of an under-storage listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UfsEntry {
    pub name: String,
    pub is_dir: bool,
    pub length: u64,
    pub mtime_ms: u64,
}

impl UfsEntry {
    fn fingerprint(&self) -> String {
        format!("{}:{}", self.length, self.mtime_ms)
    }
}

/// Attribute changes; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AttrUpdate {
    pub pinned: Option<bool>,
    /// `Some(None)` clears the TTL.
    pub ttl_ms: Option<Option<u64>>,
    pub replication_min: Option<u32>,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub persist: Option<PersistState>,
}

/// A mount request as a command carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub path: String,
    pub ufs_uri: String,
    pub read_only: bool,
    pub write_type: WriteType,
    pub sync_interval_ms: u64,
    pub options: BTreeMap<String, String>,
    pub credential_files: BTreeMap<String, String>,
}

/// The replicated commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateDirectory {
        path: String,
        recursive: bool,
        stamp: Stamp,
    },
    CreateFile {
        path: String,
        recursive: bool,
        block_size: u64,
        stamp: Stamp,
    },
    CompleteFile {
        path: String,
        length: u64,
        now_ms: u64,
    },
    Delete {
        path: String,
        recursive: bool,
    },
    Rename {
        src: String,
        dst: String,
        now_ms: u64,
    },
    SetAttribute {
        path: String,
        update: AttrUpdate,
    },
    Mount(MountSpec),
    Unmount {
        path: String,
    },
    /// Entries of one listing page of the under-storage directory behind
    /// `dir`; `vanished` names entries that the under-storage no longer has.
    /// With `complete`, the directory is marked synced at `now_ms`.
    LoadListing {
        dir: String,
        entries: Vec<UfsEntry>,
        vanished: Vec<String>,
        complete: bool,
        now_ms: u64,
    },
    /// Nothing but a log entry: a new leader proposes it to learn that its
    /// state machine has caught up.
    Noop,
    /// Moves the inode-id counter of a new cluster to `start`, a random
    /// point far above the ids any earlier incarnation handed out: a
    /// group that lost its state must not reuse ids that workers' cached
    /// blocks and FUSE clients' inode numbers still carry.
    SeedInodeIds {
        start: u64,
    },
    SubmitJob {
        spec: JobSpec,
        now_ms: u64,
    },
    /// The scheduler's replicated view of a running job; refused once the
    /// job has finished (a cancel is never undone by a late update).
    UpdateJob {
        id: JobId,
        state: JobState,
        progress: JobProgress,
        message: Option<String>,
        now_ms: u64,
    },
    CancelJob {
        id: JobId,
        now_ms: u64,
    },
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Inode(Box<Inode>),
    Deleted {
        inodes: u64,
    },
    Mounted {
        mount_id: u64,
    },
    Loaded {
        created: u64,
        updated: u64,
        removed: u64,
    },
    Job(Box<Job>),
    Done,
}

/// The namespace over a metadata store.
#[derive(Clone)]
pub struct Namespace {
    store: Arc<dyn MetaStore>,
    /// The mount table, read on every path check; reloaded from the store
    /// after a command that changes it or a snapshot install.
    mount_cache: Arc<std::sync::RwLock<MountCache>>,
}

/// The cached mount table and a generation bumped by every invalidation,
/// so a load that raced with a change is never cached.
#[derive(Default)]
struct MountCache {
    generation: u64,
    table: Option<Arc<Vec<MountInfo>>>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace").finish_non_exhaustive()
    }
}

fn read_u64(store: &dyn MetaStore, key: &str, default: u64) -> FsResult<u64> {
    Ok(match store.meta(key)? {
        Some(bytes) if bytes.len() == 8 => u64::from_be_bytes(bytes.try_into().expect("8 bytes")),
        _ => default,
    })
}

fn put_u64(key: &str, v: u64) -> Op {
    Op::PutMeta(key.to_owned(), v.to_be_bytes().to_vec())
}

/// Changes one command makes, gathered before they are written in one batch.
struct Change<'a> {
    store: &'a dyn MetaStore,
    ops: Vec<Op>,
    next_id: u64,
    inode_delta: i64,
    /// Inodes written earlier in this batch, so later steps see them.
    pending: BTreeMap<InodeId, Inode>,
    pending_edges: BTreeMap<(InodeId, String), Option<InodeId>>,
}

impl<'a> Change<'a> {
    fn new(store: &'a dyn MetaStore) -> FsResult<Self> {
        Ok(Self {
            store,
            ops: Vec::new(),
            next_id: read_u64(store, META_NEXT_ID, ROOT_ID + 1)?,
            inode_delta: 0,
            pending: BTreeMap::new(),
            pending_edges: BTreeMap::new(),
        })
    }

    fn inode(&self, id: InodeId) -> FsResult<Option<Inode>> {
        if let Some(i) = self.pending.get(&id) {
            return Ok(Some(i.clone()));
        }
        Ok(self.store.inode(id)?)
    }

    fn child(&self, parent: InodeId, name: &str) -> FsResult<Option<InodeId>> {
        if let Some(c) = self.pending_edges.get(&(parent, name.to_owned())) {
            return Ok(*c);
        }
        Ok(self.store.child(parent, name)?)
    }

    fn put(&mut self, inode: Inode) {
        self.pending.insert(inode.id, inode.clone());
        self.ops.push(Op::PutInode(inode));
    }

    fn create(&mut self, mut inode: Inode) -> Inode {
        inode.id = self.next_id;
        self.next_id += 1;
        self.inode_delta += 1;
        self.link(inode.parent, &inode.name, inode.id);
        self.put(inode.clone());
        inode
    }

    fn link(&mut self, parent: InodeId, name: &str, child: InodeId) {
        self.pending_edges
            .insert((parent, name.to_owned()), Some(child));
        self.ops.push(Op::PutEdge {
            parent,
            name: name.to_owned(),
            child,
        });
    }

    fn unlink(&mut self, parent: InodeId, name: &str) {
        self.pending_edges.insert((parent, name.to_owned()), None);
        self.ops.push(Op::DeleteEdge {
            parent,
            name: name.to_owned(),
        });
    }

    /// Removes `inode` and everything below it; returns how many inodes went.
    fn remove_tree(&mut self, inode: &Inode) -> FsResult<u64> {
        let mut removed = 0;
        let mut stack = vec![inode.clone()];
        while let Some(node) = stack.pop() {
            if node.is_dir() {
                let mut cursor: Option<String> = None;
                loop {
                    let page = self.store.children(node.id, cursor.as_deref(), 1024)?;
                    let Some((last, _)) = page.last() else { break };
                    cursor = Some(last.clone());
                    for (name, id) in page {
                        // Skip what this command already unlinked: the
                        // store does not show the batch being built.
                        if self.child(node.id, &name)? != Some(id) {
                            continue;
                        }
                        if let Some(child) = self.inode(id)? {
                            stack.push(child);
                        }
                    }
                }
            }
            self.unlink(node.parent, &node.name);
            self.ops.push(Op::DeleteInode(node.id));
            self.pending.remove(&node.id);
            removed += 1;
        }
        self.inode_delta -= removed as i64;
        Ok(removed)
    }

    fn finish(mut self, extra: Vec<Op>) -> FsResult<()> {
        let count = read_u64(self.store, META_INODE_COUNT, 1)?;
        self.ops.push(put_u64(META_NEXT_ID, self.next_id));
        self.ops.push(put_u64(
            META_INODE_COUNT,
            (count as i64 + self.inode_delta).max(0) as u64,
        ));
        self.ops.extend(extra);
        self.store.write(self.ops)?;
        Ok(())
    }
}

fn new_inode(parent: InodeId, name: &str, kind: InodeKind, stamp: &Stamp) -> Inode {
    Inode {
        id: 0,
        parent,
        name: name.to_owned(),
        kind,
        length: 0,
        block_size: DEFAULT_BLOCK_SIZE,
        completed: kind == InodeKind::Directory,
        mode: stamp.mode,
        owner: stamp.owner.clone(),
        group: stamp.group.clone(),
        mtime_ms: stamp.now_ms,
        pinned: false,
        ttl_ms: None,
        replication_min: 0,
        persist: PersistState::NotPersisted,
        synced_ms: None,
        ufs_fingerprint: None,
    }
}

/// An inode for an entry found in the under-storage, owned like its
/// directory (the under-storage's own owners mean nothing here).
fn ufs_inode(dir: &Inode, e: &UfsEntry) -> Inode {
    let kind = if e.is_dir {
        InodeKind::Directory
    } else {
        InodeKind::File
    };
    let stamp = Stamp {
        mode: if e.is_dir { 0o755 } else { 0o644 },
        owner: dir.owner.clone(),
        group: dir.group.clone(),
        now_ms: e.mtime_ms,
    };
    let mut i = new_inode(dir.id, &e.name, kind, &stamp);
    i.length = if e.is_dir { 0 } else { e.length };
    i.completed = true;
    i.persist = PersistState::Persisted;
    i.ufs_fingerprint = (!e.is_dir).then(|| e.fingerprint());
    i
}

impl Namespace {
    /// Wraps `store`, creating the root directory if the store is new.
    pub fn open(store: Arc<dyn MetaStore>) -> FsResult<Self> {
        if store.inode(ROOT_ID)?.is_none() {
            let mut root = new_inode(
                0,
                "",
                InodeKind::Directory,
                &Stamp {
                    mode: 0o755,
                    ..Stamp::default()
                },
            );
            root.id = ROOT_ID;
            root.owner = "root".into();
            root.group = "root".into();
            store.write(vec![Op::PutInode(root), put_u64(META_INODE_COUNT, 1)])?;
        }
        Ok(Self {
            store,
            mount_cache: Arc::default(),
        })
    }

    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    /// Whether the id counter has been seeded (see [`Command::SeedInodeIds`]).
    pub fn ids_seeded(&self) -> FsResult<bool> {
        Ok(read_u64(self.store.as_ref(), META_NEXT_ID, ROOT_ID + 1)? >= SEEDED_IDS_FLOOR)
    }

    pub fn inode_count(&self) -> FsResult<u64> {
        read_u64(self.store.as_ref(), META_INODE_COUNT, 1)
    }

    /// The inode at `path`, or `None`.
    pub fn lookup(&self, path: &WeirPath) -> FsResult<Option<Inode>> {
        let mut id = ROOT_ID;
        for name in path.components() {
            match self.store.child(id, name)? {
                Some(child) => id = child,
                None => return Ok(None),
            }
        }
        Ok(self.store.inode(id)?)
    }

    /// The path of the inode `id`, walking its parents up to the root, or
    /// `None` when it does not exist (any more).
    pub fn path_of(&self, id: InodeId) -> FsResult<Option<WeirPath>> {
        let mut names = Vec::new();
        let mut at = id;
        while at != ROOT_ID {
            let Some(inode) = self.store.inode(at)? else {
                return Ok(None);
            };
            names.push(inode.name);
            at = inode.parent;
            // A path has at most one component per two bytes.
            if names.len() > crate::path::MAX_PATH_BYTES / 2 {
                return Err(FsError::Store(format!(
                    "inode {id}: parent chain has a loop"
                )));
            }
        }
        let mut path = WeirPath::root();
        for name in names.iter().rev() {
            path = path.child(name)?;
        }
        Ok(Some(path))
    }

    pub fn get(&self, path: &WeirPath) -> FsResult<Inode> {
        self.lookup(path)?
            .ok_or_else(|| FsError::NotFound(path.to_string()))
    }

    /// The deepest existing inode on the way to `path`, and the path it is at.
    pub fn deepest_existing(&self, path: &WeirPath) -> FsResult<(WeirPath, Inode)> {
        let mut at = WeirPath::root();
        let mut inode = self
            .store
            .inode(ROOT_ID)?
            .ok_or_else(|| FsError::Store("no root".into()))?;
        for name in path.components() {
            let Some(child) = self.store.child(inode.id, name)? else {
                break;
            };
            let Some(next) = self.store.inode(child)? else {
                break;
            };
            at = at.child(name)?;
            inode = next;
        }
        Ok((at, inode))
    }

    /// One page of a directory listing, after `start_after`.
    pub fn list(
        &self,
        path: &WeirPath,
        start_after: Option<&str>,
        limit: usize,
    ) -> FsResult<Vec<Inode>> {
        let dir = self.get(path)?;
        if !dir.is_dir() {
            return Ok(vec![dir]);
        }
        let mut out = Vec::new();
        for (_, id) in self.store.children(dir.id, start_after, limit)? {
            if let Some(i) = self.store.inode(id)? {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Bytes of `blocks` held in cache, summed per mount path. Each block is
    /// attributed by walking its file's parents up to a mount point (walks
    /// are memoised per directory).
    pub fn cached_bytes_per_mount(&self, blocks: &[u64]) -> FsResult<BTreeMap<String, u64>> {
        let mut mount_of_dir: BTreeMap<InodeId, Option<String>> = BTreeMap::new();
        for m in self.cached_mounts()?.iter() {
            if let Some(i) = self.lookup(&WeirPath::parse(&m.path)?)? {
                mount_of_dir.insert(i.id, Some(m.path.clone()));
            }
        }
        mount_of_dir.entry(ROOT_ID).or_insert(None);
        let mut totals = BTreeMap::new();
        for &block in blocks {
            let Some(file) = self.store.inode(block_file(block))? else {
                continue;
            };
            let index = block & ((1 << BLOCK_INDEX_BITS) - 1);
            let offset = index * file.block_size;
            if file.is_dir() || offset >= file.length {
                continue;
            }
            let len = file.block_size.min(file.length - offset);
            let mut trail = Vec::new();
            let mut dir = file.parent;
            let mount = loop {
                if let Some(found) = mount_of_dir.get(&dir) {
                    break found.clone();
                }
                trail.push(dir);
                match self.store.inode(dir)? {
                    Some(d) => dir = d.parent,
                    None => break None,
                }
            };
            for d in trail {
                mount_of_dir.insert(d, mount.clone());
            }
            if let Some(m) = mount {
                *totals.entry(m).or_insert(0) += len;
            }
        }
        Ok(totals)
    }

    pub fn mounts(&self) -> FsResult<Vec<MountInfo>> {
        Ok(self.cached_mounts()?.as_ref().clone())
    }

    fn cached_mounts(&self) -> FsResult<Arc<Vec<MountInfo>>> {
        let generation = {
            let cache = self.mount_cache.read().expect("mount cache");
            if let Some(m) = &cache.table {
                return Ok(m.clone());
            }
            cache.generation
        };
        let loaded = Arc::new(self.store.mounts()?);
        let mut cache = self.mount_cache.write().expect("mount cache");
        if cache.generation == generation {
            cache.table = Some(loaded.clone());
        }
        Ok(loaded)
    }

    /// Drops cached state after the store was replaced underneath (a
    /// snapshot install).
    pub fn reload(&self) {
        let mut cache = self.mount_cache.write().expect("mount cache");
        cache.generation += 1;
        cache.table = None;
    }

    /// The mount that `path` is under (the longest mount path that is a
    /// prefix), if any.
    pub fn mount_of(&self, path: &WeirPath) -> FsResult<Option<MountInfo>> {
        let mut best: Option<&MountInfo> = None;
        let mounts = self.cached_mounts()?;
        for m in mounts.iter() {
            let mp = WeirPath::parse(&m.path)?;
            if path.starts_with(&mp) && best.is_none_or(|b| b.path.len() < m.path.len()) {
                best = Some(m);
            }
        }
        Ok(best.cloned())
    }

    fn writable(&self, path: &WeirPath) -> FsResult<()> {
        match self.mount_of(path)? {
            Some(m) if m.read_only => Err(FsError::ReadOnly(format!(
                "{path} is under read-only mount {}",
                m.path
            ))),
            _ => Ok(()),
        }
    }

    /// Applies one command; `extra` ops (the Raft applied-index) are written
    /// in the same batch, whether the command succeeds or fails.
    pub fn apply(&self, cmd: &Command, extra: Vec<Op>) -> FsResult<Reply> {
        let mut change = Change::new(self.store.as_ref())?;
        match self.plan(cmd, &mut change) {
            Ok(reply) => {
                let mounts_changed = change
                    .ops
                    .iter()
                    .any(|op| matches!(op, Op::PutMount(_) | Op::DeleteMount(_)));
                change.finish(extra)?;
                if mounts_changed {
                    self.reload();
                }
                Ok(reply)
            }
            Err(e) => {
                if !extra.is_empty() {
                    self.store.write(extra)?;
                }
                Err(e)
            }
        }
    }

    fn parse(raw: &str) -> FsResult<WeirPath> {
        Ok(WeirPath::parse(raw)?)
    }

    /// Resolves the parent of `path`, creating missing directories when
    /// `recursive`; fails when a component is a file.
    fn parent_for_create(
        &self,
        c: &mut Change<'_>,
        path: &WeirPath,
        recursive: bool,
        stamp: &Stamp,
    ) -> FsResult<Inode> {
        let parent_path = path
            .parent()
            .ok_or_else(|| FsError::AlreadyExists("/".into()))?;
        let mut dir = c
            .inode(ROOT_ID)?
            .ok_or_else(|| FsError::Store("no root".into()))?;
        let mut at = WeirPath::root();
        for name in parent_path.components() {
            at = at.child(name)?;
            match c.child(dir.id, name)? {
                Some(id) => {
                    dir = c
                        .inode(id)?
                        .ok_or_else(|| FsError::Store(format!("dangling edge at {at}")))?;
                    if !dir.is_dir() {
                        return Err(FsError::FailedPrecondition(format!(
                            "{at} is a file, not a directory"
                        )));
                    }
                }
                None if recursive => {
                    dir = c.create(new_inode(dir.id, name, InodeKind::Directory, stamp));
                }
                None => return Err(FsError::NotFound(format!("parent directory {at}"))),
            }
        }
        Ok(dir)
    }

    fn running_job(&self, id: JobId) -> FsResult<Job> {
        let job = self
            .store
            .job(id)?
            .ok_or_else(|| FsError::NotFound(format!("job {id}")))?;
        if job.state.is_finished() {
            return Err(FsError::FailedPrecondition(format!(
                "job {id} is already {}",
                job.state.as_str()
            )));
        }
        Ok(job)
    }

    fn submit_job(&self, c: &mut Change<'_>, spec: &JobSpec, now_ms: u64) -> FsResult<Reply> {
        if spec.paths.is_empty() {
            return Err(FsError::InvalidArgument("paths: at least one path".into()));
        }
        for p in &spec.paths {
            let plain = if is_glob(p) { glob_base(p) } else { p.clone() };
            WeirPath::parse(&plain)
                .map_err(|e| FsError::InvalidArgument(format!("paths: {p}: {e}")))?;
        }
        if !(1..=MAX_REPLICAS).contains(&spec.replicas) {
            return Err(FsError::InvalidArgument(format!(
                "replicas: {} is not between 1 and {MAX_REPLICAS}",
                spec.replicas
            )));
        }
        let id = read_u64(self.store.as_ref(), META_NEXT_JOB_ID, 1)?;
        c.ops.push(put_u64(META_NEXT_JOB_ID, id + 1));
        // Old finished jobs go first once there are too many to keep.
        let mut finished = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.jobs(after, 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            finished.extend(page.iter().filter(|j| j.state.is_finished()).map(|j| j.id));
        }
        let excess = finished.len().saturating_sub(MAX_RETAINED_FINISHED - 1);
        c.ops
            .extend(finished.into_iter().take(excess).map(Op::DeleteJob));
        let job = Job {
            id,
            spec: spec.clone(),
            state: JobState::Pending,
            progress: JobProgress::default(),
            message: None,
            submitted_ms: now_ms,
            started_ms: None,
            finished_ms: None,
        };
        c.ops.push(Op::PutJob(job.clone()));
        Ok(Reply::Job(Box::new(job)))
    }

    fn plan(&self, cmd: &Command, c: &mut Change<'_>) -> FsResult<Reply> {
        match cmd {
            Command::Noop => Ok(Reply::Done),
            Command::SeedInodeIds { start } => {
                let start = (*start).max(SEEDED_IDS_FLOOR);
                if c.next_id < SEEDED_IDS_FLOOR {
                    c.next_id = start;
                }
                // Mount ids too: workers keep under-storages by mount id.
                if read_u64(self.store.as_ref(), META_NEXT_MOUNT_ID, 1)? < SEEDED_IDS_FLOOR {
                    c.ops.push(put_u64(META_NEXT_MOUNT_ID, start));
                }
                Ok(Reply::Done)
            }
            Command::SubmitJob { spec, now_ms } => self.submit_job(c, spec, *now_ms),
            Command::UpdateJob {
                id,
                state,
                progress,
                message,
                now_ms,
            } => {
                let mut job = self.running_job(*id)?;
                job.state = *state;
                job.progress = progress.clone();
                job.message = message.clone();
                if *state != JobState::Pending && job.started_ms.is_none() {
                    job.started_ms = Some(*now_ms);
                }
                if state.is_finished() {
                    job.finished_ms = Some(*now_ms);
                }
                c.ops.push(Op::PutJob(job.clone()));
                Ok(Reply::Job(Box::new(job)))
            }
            Command::CancelJob { id, now_ms } => {
                let mut job = self
                    .store
                    .job(*id)?
                    .ok_or_else(|| FsError::NotFound(format!("job {id}")))?;
                if !job.state.is_finished() {
                    job.state = JobState::Cancelled;
                    job.finished_ms = Some(*now_ms);
                    job.message = Some("cancelled".into());
                    c.ops.push(Op::PutJob(job.clone()));
                }
                Ok(Reply::Job(Box::new(job)))
            }
            Command::CreateDirectory {
                path,
                recursive,
                stamp,
            } => {
                let path = Self::parse(path)?;
                self.writable(&path)?;
                if let Some(existing) = self.lookup(&path)? {
                    return if existing.is_dir() && *recursive {
                        Ok(Reply::Inode(Box::new(existing)))
                    } else {
                        Err(FsError::AlreadyExists(path.to_string()))
                    };
                }
                let parent = self.parent_for_create(c, &path, *recursive, stamp)?;
                let name = path.name().expect("not root");
                let mut dir = new_inode(parent.id, name, InodeKind::Directory, stamp);
                // A directory made in the namespace has no listing to load.
                dir.synced_ms = Some(stamp.now_ms);
                Ok(Reply::Inode(Box::new(c.create(dir))))
            }
            Command::CreateFile {
                path,
                recursive,
                block_size,
                stamp,
            } => {
                let path = Self::parse(path)?;
                self.writable(&path)?;
                if *block_size == 0 || *block_size > (1 << 40) {
                    return Err(FsError::InvalidArgument(format!(
                        "block size {block_size} out of range"
                    )));
                }
                if self.lookup(&path)?.is_some() {
                    return Err(FsError::AlreadyExists(path.to_string()));
                }
                let parent = self.parent_for_create(c, &path, *recursive, stamp)?;
                let mut file = new_inode(
                    parent.id,
                    path.name().expect("not root"),
                    InodeKind::File,
                    stamp,
                );
                file.block_size = *block_size;
                Ok(Reply::Inode(Box::new(c.create(file))))
            }
            Command::CompleteFile {
                path,
                length,
                now_ms,
            } => {
                let path = Self::parse(path)?;
                let mut file = self.get(&path)?;
                if file.is_dir() {
                    return Err(FsError::FailedPrecondition(format!(
                        "{path} is a directory"
                    )));
                }
                if file.completed {
                    return Err(FsError::FailedPrecondition(format!(
                        "{path} is already complete"
                    )));
                }
                file.completed = true;
                file.length = *length;
                file.mtime_ms = *now_ms;
                c.put(file.clone());
                Ok(Reply::Inode(Box::new(file)))
            }
            Command::Delete { path, recursive } => {
                let path = Self::parse(path)?;
                if path.is_root() {
                    return Err(FsError::InvalidArgument(
                        "the root cannot be deleted".into(),
                    ));
                }
                self.writable(&path)?;
                let inode = self.get(&path)?;
                if self.cached_mounts()?.iter().any(|m| {
                    WeirPath::parse(&m.path)
                        .map(|mp| mp.starts_with(&path))
                        .unwrap_or(false)
                }) {
                    return Err(FsError::FailedPrecondition(format!(
                        "{path} is or contains a mount point; unmount first"
                    )));
                }
                if inode.is_dir()
                    && !recursive
                    && !self.store.children(inode.id, None, 1)?.is_empty()
                {
                    return Err(FsError::FailedPrecondition(format!(
                        "directory {path} is not empty"
                    )));
                }
                let inodes = c.remove_tree(&inode)?;
                Ok(Reply::Deleted { inodes })
            }
            Command::Rename { src, dst, now_ms } => {
                let src = Self::parse(src)?;
                let dst = Self::parse(dst)?;
                if src.is_root() || dst.is_root() {
                    return Err(FsError::InvalidArgument(
                        "the root cannot be renamed".into(),
                    ));
                }
                if dst.starts_with(&src) {
                    return Err(FsError::InvalidArgument(format!(
                        "cannot move {src} into itself ({dst})"
                    )));
                }
                self.writable(&src)?;
                self.writable(&dst)?;
                let src_mount = self.mount_of(&src)?.map(|m| m.path);
                if src_mount != self.mount_of(&dst)?.map(|m| m.path) {
                    return Err(FsError::InvalidArgument(format!(
                        "{src} and {dst} are in different mounts"
                    )));
                }
                if self.cached_mounts()?.iter().any(|m| m.path == src.as_str()) {
                    return Err(FsError::FailedPrecondition(format!(
                        "{src} is a mount point"
                    )));
                }
                let mut inode = self.get(&src)?;
                if self.lookup(&dst)?.is_some() {
                    return Err(FsError::AlreadyExists(dst.to_string()));
                }
                let dst_parent_path = dst.parent().expect("not root");
                let dst_parent = self.lookup(&dst_parent_path)?.ok_or_else(|| {
                    FsError::NotFound(format!("parent directory {dst_parent_path}"))
                })?;
                if !dst_parent.is_dir() {
                    return Err(FsError::FailedPrecondition(format!(
                        "{dst_parent_path} is a file"
                    )));
                }
                c.unlink(inode.parent, &inode.name);
                inode.parent = dst_parent.id;
                inode.name = dst.name().expect("not root").to_owned();
                inode.mtime_ms = *now_ms;
                c.link(inode.parent, &inode.name, inode.id);
                c.put(inode.clone());
                Ok(Reply::Inode(Box::new(inode)))
            }
            Command::SetAttribute { path, update } => {
                let path = Self::parse(path)?;
                let mut inode = self.get(&path)?;
                if let Some(p) = update.pinned {
                    inode.pinned = p;
                }
                if let Some(t) = update.ttl_ms {
                    inode.ttl_ms = t;
                }
                if let Some(r) = update.replication_min {
                    inode.replication_min = r;
                }
                if let Some(m) = update.mode {
                    if m > 0o7777 {
                        return Err(FsError::InvalidArgument(format!("mode {m:o} out of range")));
                    }
                    inode.mode = m;
                }
                if let Some(o) = &update.owner {
                    inode.owner = o.clone();
                }
                if let Some(g) = &update.group {
                    inode.group = g.clone();
                }
                if let Some(p) = update.persist {
                    inode.persist = p;
                }
                c.put(inode.clone());
                Ok(Reply::Inode(Box::new(inode)))
            }
            Command::Mount(spec) => {
                let path = Self::parse(&spec.path)?;
                validate_ufs_uri(&spec.ufs_uri)?;
                let mounts = self.cached_mounts()?;
                for m in mounts.iter() {
                    let mp = WeirPath::parse(&m.path)?;
                    if mp == path {
                        return Err(FsError::AlreadyExists(format!("mount at {path}")));
                    }
                    if path.starts_with(&mp) || mp.starts_with(&path) {
                        return Err(FsError::FailedPrecondition(format!(
                            "{path} overlaps mount {}",
                            m.path
                        )));
                    }
                }
                let stamp = Stamp {
                    mode: 0o755,
                    owner: "root".into(),
                    group: "root".into(),
                    now_ms: 0,
                };
                match self.lookup(&path)? {
                    Some(mut dir)
                        if dir.is_dir() && self.store.children(dir.id, None, 1)?.is_empty() =>
                    {
                        // An empty directory (or the root) becomes the mount
                        // point; its listing loads on first access.
                        dir.synced_ms = None;
                        dir.persist = PersistState::Persisted;
                        c.put(dir);
                    }
                    Some(_) => {
                        return Err(FsError::FailedPrecondition(format!(
                            "{path} exists and is not an empty directory"
                        )));
                    }
                    None => {
                        let parent = self.parent_for_create(c, &path, true, &stamp)?;
                        let name = path.name().expect("not root");
                        let mut dir = new_inode(parent.id, name, InodeKind::Directory, &stamp);
                        dir.persist = PersistState::Persisted;
                        c.create(dir);
                    }
                }
                let mount_id = read_u64(self.store.as_ref(), META_NEXT_MOUNT_ID, 1)?;
                c.ops.push(put_u64(META_NEXT_MOUNT_ID, mount_id + 1));
                c.ops.push(Op::PutMount(MountInfo {
                    path: path.to_string(),
                    ufs_uri: spec.ufs_uri.clone(),
                    read_only: spec.read_only,
                    write_type: spec.write_type,
                    sync_interval_ms: spec.sync_interval_ms,
                    options: spec.options.clone(),
                    credential_files: spec.credential_files.clone(),
                    mount_id,
                }));
                Ok(Reply::Mounted { mount_id })
            }
            Command::Unmount { path } => {
                let path = Self::parse(path)?;
                if !self
                    .cached_mounts()?
                    .iter()
                    .any(|m| m.path == path.as_str())
                {
                    return Err(FsError::NotFound(format!("no mount at {path}")));
                }
                c.ops.push(Op::DeleteMount(path.to_string()));
                // The cached view of the under-storage goes with the mount.
                let dir = self.get(&path)?;
                let removed = if path.is_root() {
                    // The root stays; everything under it goes.
                    let mut removed = 0;
                    let mut cursor: Option<String> = None;
                    loop {
                        let page = self.store.children(dir.id, cursor.as_deref(), 1024)?;
                        let Some((last, _)) = page.last() else { break };
                        cursor = Some(last.clone());
                        for (_, id) in page {
                            if let Some(child) = c.inode(id)? {
                                removed += c.remove_tree(&child)?;
                            }
                        }
                    }
                    removed
                } else {
                    c.remove_tree(&dir)?
                };
                Ok(Reply::Deleted { inodes: removed })
            }
            Command::LoadListing {
                dir,
                entries,
                vanished,
                complete,
                now_ms,
            } => {
                let dir_path = Self::parse(dir)?;
                let Some(mut dir_inode) = self.lookup(&dir_path)? else {
                    // The directory went (deleted or unmounted) while it was
                    // being listed: nothing to load into.
                    return Ok(Reply::Loaded {
                        created: 0,
                        updated: 0,
                        removed: 0,
                    });
                };
                if !dir_inode.is_dir() {
                    return Err(FsError::FailedPrecondition(format!("{dir_path} is a file")));
                }
                let (mut created, mut updated, mut removed) = (0, 0, 0);
                for e in entries {
                    WeirPath::root().child(&e.name)?;
                    let kind = if e.is_dir {
                        InodeKind::Directory
                    } else {
                        InodeKind::File
                    };
                    match c.child(dir_inode.id, &e.name)? {
                        None => {
                            c.create(ufs_inode(&dir_inode, e));
                            created += 1;
                        }
                        Some(id) => {
                            let Some(existing) = c.inode(id)? else {
                                continue;
                            };
                            if existing.kind != kind {
                                removed += c.remove_tree(&existing)?;
                                c.create(ufs_inode(&dir_inode, e));
                                created += 1;
                            } else if !e.is_dir
                                && existing.persist == PersistState::Persisted
                                && existing.ufs_fingerprint.as_deref()
                                    != Some(e.fingerprint().as_str())
                            {
                                // Changed in the under-storage: a new inode id,
                                // so blocks cached for the old content are
                                // never served for the new.
                                c.remove_tree(&existing)?;
                                let mut i = existing.clone();
                                i.length = e.length;
                                i.mtime_ms = e.mtime_ms;
                                i.ufs_fingerprint = Some(e.fingerprint());
                                c.create(i);
                                updated += 1;
                            }
                        }
                    }
                }
                for name in vanished {
                    if let Some(id) = c.child(dir_inode.id, name)?
                        && let Some(existing) = c.inode(id)?
                        && existing.persist == PersistState::Persisted
                    {
                        removed += c.remove_tree(&existing)?;
                    }
                }
                if *complete {
                    dir_inode.synced_ms = Some(*now_ms);
                    c.put(dir_inode);
                }
                Ok(Reply::Loaded {
                    created,
                    updated,
                    removed,
                })
            }
        }
    }
}

/// Accepts the schemes Weir has under-storage for; rejects `..` and NUL so
/// a mount can never point outside what the user named.
pub fn validate_ufs_uri(uri: &str) -> FsResult<()> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(FsError::InvalidArgument(format!(
            "under-storage URI {uri:?} has no scheme"
        )));
    };
    if !matches!(
        scheme,
        "s3" | "hdfs" | "webhdfs" | "http" | "https" | "local" | "file" | "memory"
    ) {
        return Err(FsError::InvalidArgument(format!(
            "under-storage scheme {scheme:?} is not supported"
        )));
    }
    if rest.contains('\0') || rest.split('/').any(|seg| seg == "..") {
        return Err(FsError::InvalidArgument(format!(
            "under-storage URI {uri:?} contains `..` or NUL"
        )));
    }
    Ok(())
}

/// Block id of block `index` of file `inode`.
pub fn block_id(inode: InodeId, index: u64) -> u64 {
    (inode << BLOCK_INDEX_BITS) | index
}

/// The file a block belongs to.
pub fn block_file(block: u64) -> InodeId {
    block >> BLOCK_INDEX_BITS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::metastore::MemoryStore;

    fn ns() -> Namespace {
        Namespace::open(Arc::new(MemoryStore::new())).unwrap()
    }

    fn stamp() -> Stamp {
        Stamp {
            owner: "alice".into(),
            group: "data".into(),
            mode: 0o755,
            now_ms: 1000,
        }
    }

    fn p(s: &str) -> WeirPath {
        WeirPath::parse(s).unwrap()
    }

    fn load_spec(paths: &[&str], replicas: u32) -> JobSpec {
        JobSpec {
            kind: crate::master::jobs::JobKind::Load,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            replicas,
            parallelism: 0,
            bandwidth: 0,
            load_metadata: false,
            load_what_fits: false,
        }
    }

    fn submit(ns: &Namespace, spec: JobSpec) -> FsResult<Job> {
        match ns.apply(&Command::SubmitJob { spec, now_ms: 5 }, vec![])? {
            Reply::Job(j) => Ok(*j),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seeded_ids_start_far_up_and_are_seeded_once() {
        let ns = ns();
        assert!(!ns.ids_seeded().unwrap());
        let seed = random_id_seed();
        assert!((SEEDED_IDS_FLOOR..(1 << 39)).contains(&seed));
        ns.apply(&Command::SeedInodeIds { start: seed }, vec![])
            .unwrap();
        assert!(ns.ids_seeded().unwrap());
        let create = |path: &str| match ns
            .apply(
                &Command::CreateDirectory {
                    path: path.into(),
                    recursive: false,
                    stamp: stamp(),
                },
                vec![],
            )
            .unwrap()
        {
            Reply::Inode(i) => i.id,
            other => panic!("{other:?}"),
        };
        assert_eq!(create("/a"), seed);
        let mounted = ns
            .apply(
                &Command::Mount(MountSpec {
                    path: "/m".into(),
                    ufs_uri: "local:///tmp".into(),
                    read_only: true,
                    write_type: WriteType::CacheThrough,
                    sync_interval_ms: 0,
                    options: Default::default(),
                    credential_files: Default::default(),
                }),
                vec![],
            )
            .unwrap();
        assert_eq!(
            mounted,
            Reply::Mounted { mount_id: seed },
            "mount ids are seeded too"
        );
        // A second seed (another leader's) changes nothing.
        ns.apply(
            &Command::SeedInodeIds {
                start: SEEDED_IDS_FLOOR + 7,
            },
            vec![],
        )
        .unwrap();
        assert_eq!(
            create("/b"),
            seed + 2,
            "the mount's directory took seed + 1"
        );
    }

    #[test]
    fn path_of_an_id_follows_renames_and_forgets_deleted_inodes() {
        let ns = ns();
        let mkdir = |path: &str| match ns
            .apply(
                &Command::CreateDirectory {
                    path: path.into(),
                    recursive: true,
                    stamp: stamp(),
                },
                vec![],
            )
            .unwrap()
        {
            Reply::Inode(i) => i.id,
            other => panic!("{other:?}"),
        };
        let deep = mkdir("/a/b/c");
        assert_eq!(ns.path_of(deep).unwrap(), Some(p("/a/b/c")));
        assert_eq!(ns.path_of(ROOT_ID).unwrap(), Some(WeirPath::root()));
        ns.apply(
            &Command::Rename {
                src: "/a/b".into(),
                dst: "/a/z".into(),
                now_ms: 2,
            },
            vec![],
        )
        .unwrap();
        assert_eq!(ns.path_of(deep).unwrap(), Some(p("/a/z/c")));
        ns.apply(
            &Command::Delete {
                path: "/a".into(),
                recursive: true,
            },
            vec![],
        )
        .unwrap();
        assert_eq!(ns.path_of(deep).unwrap(), None);
        assert_eq!(ns.path_of(9_999).unwrap(), None);
    }

    #[test]
    fn jobs_get_ids_in_order_refuse_bad_specs_and_stay_cancelled() {
        let ns = ns();
        let a = submit(&ns, load_spec(&["/data"], 1)).unwrap();
        let b = submit(&ns, load_spec(&["/data/*.csv", "/x"], 2)).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(a.state, JobState::Pending);
        for (spec, field) in [
            (load_spec(&[], 1), "paths"),
            (load_spec(&["relative"], 1), "paths: relative"),
            (load_spec(&["/a"], 0), "replicas"),
            (load_spec(&["/a"], MAX_REPLICAS + 1), "replicas"),
        ] {
            let e = submit(&ns, spec).unwrap_err();
            assert!(
                matches!(&e, FsError::InvalidArgument(m) if m.starts_with(field)),
                "{e}"
            );
        }
        let progress = JobProgress {
            planned: true,
            bytes_total: 10,
            bytes_done: 4,
            ..JobProgress::default()
        };
        let update = |state| Command::UpdateJob {
            id: 1,
            state,
            progress: progress.clone(),
            message: None,
            now_ms: 7,
        };
        let Reply::Job(running) = ns.apply(&update(JobState::Running), vec![]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (running.started_ms, running.progress.bytes_done),
            (Some(7), 4)
        );
        ns.apply(&Command::CancelJob { id: 1, now_ms: 8 }, vec![])
            .unwrap();
        // A late update from the scheduler does not undo the cancel.
        assert!(matches!(
            ns.apply(&update(JobState::Running), vec![]),
            Err(FsError::FailedPrecondition(_))
        ));
        let job = ns.store().job(1).unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.finished_ms, Some(8));
        assert!(matches!(
            ns.apply(&Command::CancelJob { id: 99, now_ms: 8 }, vec![]),
            Err(FsError::NotFound(_))
        ));
    }

    #[test]
    fn only_the_newest_finished_jobs_are_kept() {
        let ns = ns();
        let total = MAX_RETAINED_FINISHED as u64 + 5;
        for id in 1..=total {
            submit(&ns, load_spec(&["/a"], 1)).unwrap();
            ns.apply(&Command::CancelJob { id, now_ms: 9 }, vec![])
                .unwrap();
        }
        let running = submit(&ns, load_spec(&["/a"], 1)).unwrap();
        let kept = ns.store().jobs(None, usize::MAX).unwrap();
        assert_eq!(kept.len(), MAX_RETAINED_FINISHED);
        assert_eq!(kept.last().unwrap().id, running.id, "unfinished jobs stay");
        assert_eq!(kept[0].id, running.id + 1 - MAX_RETAINED_FINISHED as u64);
    }

    fn mkdir(ns: &Namespace, path: &str, recursive: bool) -> FsResult<Reply> {
        ns.apply(
            &Command::CreateDirectory {
                path: path.into(),
                recursive,
                stamp: stamp(),
            },
            vec![],
        )
    }

    fn touch(ns: &Namespace, path: &str) -> FsResult<Reply> {
        ns.apply(
            &Command::CreateFile {
                path: path.into(),
                recursive: false,
                block_size: 1 << 20,
                stamp: stamp(),
            },
            vec![],
        )?;
        ns.apply(
            &Command::CompleteFile {
                path: path.into(),
                length: 5,
                now_ms: 2000,
            },
            vec![],
        )
    }

    fn mount(ns: &Namespace, path: &str, read_only: bool) -> FsResult<Reply> {
        ns.apply(
            &Command::Mount(MountSpec {
                path: path.into(),
                ufs_uri: "s3://bucket/prefix".into(),
                read_only,
                write_type: WriteType::CacheThrough,
                sync_interval_ms: 0,
                options: BTreeMap::new(),
                credential_files: BTreeMap::new(),
            }),
            vec![],
        )
    }

    #[test]
    fn creates_nested_files_and_counts_inodes() {
        let ns = ns();
        assert!(matches!(
            mkdir(&ns, "/a/b", false),
            Err(FsError::NotFound(_))
        ));
        mkdir(&ns, "/a/b", true).unwrap();
        touch(&ns, "/a/b/f").unwrap();
        let f = ns.get(&p("/a/b/f")).unwrap();
        assert_eq!(
            (f.length, f.completed, f.owner.as_str()),
            (5, true, "alice")
        );
        assert_eq!(ns.inode_count().unwrap(), 4);
        assert!(matches!(
            touch(&ns, "/a/b/f"),
            Err(FsError::AlreadyExists(_))
        ));
        assert!(matches!(
            mkdir(&ns, "/a", false),
            Err(FsError::AlreadyExists(_))
        ));
        assert!(
            mkdir(&ns, "/a", true).is_ok(),
            "recursive mkdir of an existing dir is fine"
        );
    }

    #[test]
    fn bad_requests_get_the_right_error() {
        let ns = ns();
        touch(&ns, "/file").unwrap();
        assert!(matches!(
            touch(&ns, "/file/child"),
            Err(FsError::FailedPrecondition(_))
        ));
        assert!(matches!(
            touch(&ns, "relative"),
            Err(FsError::InvalidArgument(_))
        ));
        assert!(matches!(
            touch(&ns, "/a/../b"),
            Err(FsError::InvalidArgument(_))
        ));
        assert!(matches!(
            touch(&ns, "/a\0"),
            Err(FsError::InvalidArgument(_))
        ));
        assert!(matches!(
            touch(&ns, "//x"),
            Err(FsError::InvalidArgument(_))
        ));
        let done = ns.apply(
            &Command::CompleteFile {
                path: "/file".into(),
                length: 1,
                now_ms: 1,
            },
            vec![],
        );
        assert!(
            matches!(done, Err(FsError::FailedPrecondition(_))),
            "completing twice"
        );
        mkdir(&ns, "/d/e", true).unwrap();
        let del = ns.apply(
            &Command::Delete {
                path: "/d".into(),
                recursive: false,
            },
            vec![],
        );
        assert!(
            matches!(del, Err(FsError::FailedPrecondition(_))),
            "non-recursive delete of a non-empty dir"
        );
        let del = ns.apply(
            &Command::Delete {
                path: "/missing".into(),
                recursive: true,
            },
            vec![],
        );
        assert!(matches!(del, Err(FsError::NotFound(_))));
        let del = ns.apply(
            &Command::Delete {
                path: "/".into(),
                recursive: true,
            },
            vec![],
        );
        assert!(matches!(del, Err(FsError::InvalidArgument(_))));
        let mv = ns.apply(
            &Command::Rename {
                src: "/d".into(),
                dst: "/d/e/f".into(),
                now_ms: 1,
            },
            vec![],
        );
        assert!(
            matches!(mv, Err(FsError::InvalidArgument(_))),
            "rename of a dir into itself"
        );
        let unmount = ns.apply(
            &Command::Unmount {
                path: "/nothing".into(),
            },
            vec![],
        );
        assert!(matches!(unmount, Err(FsError::NotFound(_))));
        let bad_block = ns.apply(
            &Command::CreateFile {
                path: "/z".into(),
                recursive: false,
                block_size: 0,
                stamp: stamp(),
            },
            vec![],
        );
        assert!(matches!(bad_block, Err(FsError::InvalidArgument(_))));
    }

    #[test]
    fn failed_commands_change_nothing_but_still_record_extra_ops() {
        let ns = ns();
        touch(&ns, "/f").unwrap();
        let before = ns.store().export().unwrap().len();
        let r = ns.apply(
            &Command::Delete {
                path: "/nope".into(),
                recursive: false,
            },
            vec![Op::PutMeta("applied".into(), vec![7])],
        );
        assert!(r.is_err());
        assert_eq!(ns.store().meta("applied").unwrap(), Some(vec![7]));
        assert_eq!(ns.store().export().unwrap().len(), before + 1);
    }

    #[test]
    fn delete_and_rename_move_whole_subtrees() {
        let ns = ns();
        mkdir(&ns, "/x/y", true).unwrap();
        touch(&ns, "/x/y/f").unwrap();
        ns.apply(
            &Command::Rename {
                src: "/x".into(),
                dst: "/z".into(),
                now_ms: 5,
            },
            vec![],
        )
        .unwrap();
        assert!(ns.lookup(&p("/x")).unwrap().is_none());
        assert_eq!(ns.get(&p("/z/y/f")).unwrap().length, 5);
        let r = ns
            .apply(
                &Command::Delete {
                    path: "/z".into(),
                    recursive: true,
                },
                vec![],
            )
            .unwrap();
        assert_eq!(r, Reply::Deleted { inodes: 3 });
        assert_eq!(ns.inode_count().unwrap(), 1);
        assert!(ns.store().children(ROOT_ID, None, 10).unwrap().is_empty());
    }

    #[test]
    fn mounts_guard_their_paths() {
        let ns = ns();
        mount(&ns, "/data/s3", true).unwrap();
        assert!(matches!(
            mount(&ns, "/data/s3", true),
            Err(FsError::AlreadyExists(_))
        ));
        assert!(matches!(
            mount(&ns, "/data/s3/inner", true),
            Err(FsError::FailedPrecondition(_))
        ));
        assert!(matches!(
            mount(&ns, "/data", true),
            Err(FsError::FailedPrecondition(_))
        ));
        assert!(matches!(
            touch(&ns, "/data/s3/new"),
            Err(FsError::ReadOnly(_))
        ));
        let del = ns.apply(
            &Command::Delete {
                path: "/data".into(),
                recursive: true,
            },
            vec![],
        );
        assert!(matches!(del, Err(FsError::FailedPrecondition(_))));
        let bad = ns.apply(
            &Command::Mount(MountSpec {
                path: "/evil".into(),
                ufs_uri: "s3://bucket/../other".into(),
                read_only: true,
                write_type: WriteType::MustCache,
                sync_interval_ms: 0,
                options: BTreeMap::new(),
                credential_files: BTreeMap::new(),
            }),
            vec![],
        );
        assert!(matches!(bad, Err(FsError::InvalidArgument(_))));
        assert_eq!(
            ns.mount_of(&p("/data/s3/a/b")).unwrap().unwrap().path,
            "/data/s3"
        );
        assert!(ns.mount_of(&p("/data/s")).unwrap().is_none());
        ns.apply(
            &Command::Unmount {
                path: "/data/s3".into(),
            },
            vec![],
        )
        .unwrap();
        assert!(ns.mounts().unwrap().is_empty());
        assert!(ns.lookup(&p("/data/s3")).unwrap().is_none());
    }

    #[test]
    fn cached_bytes_are_attributed_to_their_mounts() {
        let ns = ns();
        mount(&ns, "/m", false).unwrap();
        let entry = |name: &str, length| UfsEntry {
            name: name.into(),
            is_dir: false,
            length,
            mtime_ms: 1,
        };
        let cmd = Command::LoadListing {
            dir: "/m".into(),
            entries: vec![entry("big", DEFAULT_BLOCK_SIZE + 10), entry("small", 5)],
            vanished: vec![],
            complete: true,
            now_ms: 1,
        };
        ns.apply(&cmd, vec![]).unwrap();
        touch(&ns, "/outside").unwrap();
        let big = ns.get(&p("/m/big")).unwrap().id;
        let small = ns.get(&p("/m/small")).unwrap().id;
        let outside = ns.get(&p("/outside")).unwrap().id;
        let blocks = [
            block_id(big, 0),
            block_id(big, 1),
            block_id(small, 0),
            block_id(outside, 0),
            block_id(big, 9),
        ];
        let totals = ns.cached_bytes_per_mount(&blocks).unwrap();
        assert_eq!(totals.get("/m"), Some(&(DEFAULT_BLOCK_SIZE + 10 + 5)));
        assert_eq!(totals.len(), 1, "files outside mounts count nowhere");
    }

    #[test]
    fn listings_load_update_and_remove_entries() {
        let ns = ns();
        mount(&ns, "/m", false).unwrap();
        assert_eq!(ns.get(&p("/m")).unwrap().synced_ms, None);
        let entry = |name: &str, length, mtime_ms| UfsEntry {
            name: name.into(),
            is_dir: false,
            length,
            mtime_ms,
        };
        let load = |entries, vanished, complete| {
            ns.apply(
                &Command::LoadListing {
                    dir: "/m".into(),
                    entries,
                    vanished,
                    complete,
                    now_ms: 99,
                },
                vec![],
            )
            .unwrap()
        };
        let r = load(vec![entry("a", 10, 1), entry("b", 20, 1)], vec![], false);
        assert_eq!(
            r,
            Reply::Loaded {
                created: 2,
                updated: 0,
                removed: 0
            }
        );
        assert_eq!(
            ns.get(&p("/m")).unwrap().synced_ms,
            None,
            "not complete yet"
        );
        let old_a = ns.get(&p("/m/a")).unwrap().id;
        let r = load(
            vec![entry("a", 11, 2), entry("b", 20, 1)],
            vec!["gone".into(), "b".into()],
            true,
        );
        assert_eq!(
            r,
            Reply::Loaded {
                created: 0,
                updated: 1,
                removed: 1
            }
        );
        let new_a = ns.get(&p("/m/a")).unwrap();
        assert_ne!(new_a.id, old_a, "changed content gets a new inode id");
        assert_eq!(new_a.length, 11);
        assert!(ns.lookup(&p("/m/b")).unwrap().is_none());
        assert_eq!(ns.get(&p("/m")).unwrap().synced_ms, Some(99));
        assert_eq!(ns.inode_count().unwrap(), 3);
        let bad = ns.apply(
            &Command::LoadListing {
                dir: "/m".into(),
                entries: vec![entry("..", 1, 1)],
                vanished: vec![],
                complete: false,
                now_ms: 1,
            },
            vec![],
        );
        assert!(matches!(bad, Err(FsError::InvalidArgument(_))));
    }

    #[test]
    fn replay_gives_the_same_tree() {
        let cmds = vec![
            Command::CreateDirectory {
                path: "/a".into(),
                recursive: true,
                stamp: stamp(),
            },
            Command::CreateFile {
                path: "/a/f".into(),
                recursive: false,
                block_size: 8,
                stamp: stamp(),
            },
            Command::CompleteFile {
                path: "/a/f".into(),
                length: 3,
                now_ms: 4,
            },
            Command::Rename {
                src: "/a/f".into(),
                dst: "/g".into(),
                now_ms: 5,
            },
            Command::Delete {
                path: "/a".into(),
                recursive: true,
            },
        ];
        let (one, two) = (ns(), ns());
        for c in &cmds {
            let _ = one.apply(c, vec![]);
            let _ = two.apply(c, vec![]);
        }
        let key = |op: &Op| format!("{op:?}");
        let (mut a, mut b) = (one.store().export().unwrap(), two.store().export().unwrap());
        a.sort_by_key(key);
        b.sort_by_key(key);
        assert_eq!(a, b);
        assert_eq!(one.get(&p("/g")).unwrap().length, 3);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::master::metastore::{MemoryStore, RocksStore};
    use proptest::prelude::*;

    fn path_strategy() -> impl Strategy<Value = String> {
        // Mostly valid paths over a tiny alphabet (so commands collide),
        // sometimes raw junk.
        prop_oneof![
            4 => proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
                .prop_map(|v| format!("/{}", v.join("/"))),
            1 => "\\PC{0,12}",
            1 => Just("/a/../b".to_owned()),
        ]
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        let stamp = Stamp {
            owner: "u".into(),
            group: "g".into(),
            mode: 0o755,
            now_ms: 1,
        };
        prop_oneof![
            (path_strategy(), any::<bool>()).prop_map({
                let stamp = stamp.clone();
                move |(path, recursive)| Command::CreateDirectory {
                    path,
                    recursive,
                    stamp: stamp.clone(),
                }
            }),
            (path_strategy(), any::<bool>()).prop_map(move |(path, recursive)| {
                Command::CreateFile {
                    path,
                    recursive,
                    block_size: 4096,
                    stamp: stamp.clone(),
                }
            }),
            (path_strategy(), 0u64..10_000).prop_map(|(path, length)| Command::CompleteFile {
                path,
                length,
                now_ms: 2
            }),
            (path_strategy(), any::<bool>())
                .prop_map(|(path, recursive)| Command::Delete { path, recursive }),
            (path_strategy(), path_strategy()).prop_map(|(src, dst)| Command::Rename {
                src,
                dst,
                now_ms: 3
            }),
            (path_strategy(), any::<bool>()).prop_map(|(path, pinned)| Command::SetAttribute {
                path,
                update: AttrUpdate {
                    pinned: Some(pinned),
                    ..AttrUpdate::default()
                }
            }),
            path_strategy().prop_map(|path| Command::Mount(MountSpec {
                path,
                ufs_uri: "s3://bucket/x".into(),
                read_only: false,
                write_type: WriteType::MustCache,
                sync_interval_ms: 0,
                options: BTreeMap::new(),
                credential_files: BTreeMap::new(),
            })),
            path_strategy().prop_map(|path| Command::Unmount { path }),
            (
                path_strategy(),
                proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("..")], 0..3)
            )
                .prop_map(|(dir, names)| Command::LoadListing {
                    dir,
                    entries: names
                        .iter()
                        .map(|n| UfsEntry {
                            name: (*n).into(),
                            is_dir: n == &"a",
                            length: 1,
                            mtime_ms: 1
                        })
                        .collect(),
                    vanished: vec!["b".into()],
                    complete: true,
                    now_ms: 4,
                }),
        ]
    }

    /// Every edge names an inode whose parent and name agree; every inode
    /// but the root is reachable by exactly one edge; the count is exact.
    fn check_invariants(ns: &Namespace) {
        let ops = ns.store().export().unwrap();
        let mut inodes = BTreeMap::new();
        let mut edges = Vec::new();
        for op in ops {
            match op {
                Op::PutInode(i) => {
                    inodes.insert(i.id, i);
                }
                Op::PutEdge {
                    parent,
                    name,
                    child,
                } => edges.push((parent, name, child)),
                _ => {}
            }
        }
        assert!(inodes.contains_key(&ROOT_ID));
        let mut linked = std::collections::BTreeSet::new();
        for (parent, name, child) in &edges {
            let c = inodes.get(child).expect("edge to a missing inode");
            assert_eq!(
                (&c.parent, &c.name),
                (parent, name),
                "edge and inode disagree"
            );
            assert!(
                inodes
                    .get(parent)
                    .expect("edge from a missing parent")
                    .is_dir(),
                "parent is a file"
            );
            assert!(linked.insert(*child), "inode {child} linked twice");
        }
        assert_eq!(linked.len() + 1, inodes.len(), "orphan inodes");
        assert_eq!(ns.inode_count().unwrap(), inodes.len() as u64);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn random_commands_keep_the_tree_consistent(cmds in proptest::collection::vec(command_strategy(), 1..40)) {
            let ns = Namespace::open(Arc::new(MemoryStore::new())).unwrap();
            for cmd in &cmds {
                let _ = ns.apply(cmd, vec![]);
                check_invariants(&ns);
            }
        }

        #[test]
        fn memory_and_rocks_agree(cmds in proptest::collection::vec(command_strategy(), 1..25)) {
            let dir = tempfile::tempdir().unwrap();
            let mem = Namespace::open(Arc::new(MemoryStore::new())).unwrap();
            let rocks = Namespace::open(Arc::new(RocksStore::open(dir.path(), 16).unwrap())).unwrap();
            for cmd in &cmds {
                prop_assert_eq!(mem.apply(cmd, vec![]), rocks.apply(cmd, vec![]));
            }
            let key = |op: &Op| format!("{op:?}");
            let (mut a, mut b) = (mem.store().export().unwrap(), rocks.store().export().unwrap());
            a.sort_by_key(key);
            b.sort_by_key(key);
            prop_assert_eq!(a, b);
        }
    }
}
