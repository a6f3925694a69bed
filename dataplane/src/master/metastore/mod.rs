//! The master's metadata: inodes, the edges that name them, the mount table,
//! jobs and a few scalar values. Storage sits behind [`MetaStore`]; RocksDB keeps
//! it on disk (the Raft state machine's home), the in-memory store serves
//! tests and small clusters. Both pass [`conformance`].
//!
//! Every change goes through [`MetaStore::write`] as one atomic batch, so a
//! Raft entry's effects and the applied log id land together or not at all.

pub mod conformance;
mod memory;
mod rocks;

pub use memory::MemoryStore;
pub use rocks::RocksStore;

pub use crate::master::jobs::{Job, JobId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type InodeId = u64;
/// The root directory's inode id.
pub const ROOT_ID: InodeId = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("encoding: {0}")]
    Encode(#[source] postcard::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    File,
    Directory,
}

/// Whether a file's data exists in the under-storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PersistState {
    /// Written to the cache only (MUST_CACHE, or ASYNC_THROUGH not yet done).
    #[default]
    NotPersisted,
    /// ASYNC_THROUGH: queued for persistence; its blocks stay pinned.
    ToBePersisted,
    /// Present in the under-storage.
    Persisted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: InodeId,
    pub parent: InodeId,
    pub name: String,
    pub kind: InodeKind,
    /// Bytes; 0 for directories.
    pub length: u64,
    pub block_size: u64,
    /// False while a file is being written; readers see only complete files.
    pub completed: bool,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub mtime_ms: u64,
    pub pinned: bool,
    /// Milliseconds after `mtime_ms` at which the cached data may be freed.
    pub ttl_ms: Option<u64>,
    pub replication_min: u32,
    pub persist: PersistState,
    /// For directories backed by an under-storage: when its listing was last
    /// loaded (None: never, so the next access loads it).
    pub synced_ms: Option<u64>,
    /// Under-storage fingerprint (length and mtime) seen at the last sync;
    /// a change invalidates cached blocks.
    pub ufs_fingerprint: Option<String>,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == InodeKind::Directory
    }
}

/// How writes through a mount reach its under-storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum WriteType {
    #[default]
    MustCache,
    CacheThrough,
    Through,
    AsyncThrough,
}

/// One entry of the mount table: `path` in the namespace shows `ufs_uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub path: String,
    pub ufs_uri: String,
    pub read_only: bool,
    pub write_type: WriteType,
    /// 0: never re-validate a loaded listing.
    pub sync_interval_ms: u64,
    /// Options for the under-storage (endpoint, region ...), never secrets.
    pub options: BTreeMap<String, String>,
    /// Secret values are given as paths of files mounted into the pod.
    pub credential_files: BTreeMap<String, String>,
    pub mount_id: u64,
}

/// One change in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutInode(Inode),
    DeleteInode(InodeId),
    PutEdge {
        parent: InodeId,
        name: String,
        child: InodeId,
    },
    DeleteEdge {
        parent: InodeId,
        name: String,
    },
    PutMount(MountInfo),
    DeleteMount(String),
    PutMeta(String, Vec<u8>),
    PutJob(Job),
    DeleteJob(JobId),
}

/// The storage contract of the master's metadata.
pub trait MetaStore: Send + Sync + 'static {
    fn inode(&self, id: InodeId) -> StoreResult<Option<Inode>>;
    fn child(&self, parent: InodeId, name: &str) -> StoreResult<Option<InodeId>>;
    /// Children of `parent` in name order, strictly after `start_after`, at
    /// most `limit` of them: listings are paged, never whole.
    fn children(
        &self,
        parent: InodeId,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, InodeId)>>;
    fn mounts(&self) -> StoreResult<Vec<MountInfo>>;
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    fn job(&self, id: JobId) -> StoreResult<Option<Job>>;
    /// Jobs in id (submission) order, strictly after `after`, at most
    /// `limit` of them.
    fn jobs(&self, after: Option<JobId>, limit: usize) -> StoreResult<Vec<Job>>;
    /// Applies every op or none.
    fn write(&self, ops: Vec<Op>) -> StoreResult<()>;
    /// Every inode, edge, mount and meta value, for snapshots: one
    /// consistent point in time, even while writes continue.
    fn export(&self) -> StoreResult<Vec<Op>>;
    /// Replaces the whole content with `ops` (a snapshot being installed).
    fn replace_all(&self, ops: Vec<Op>) -> StoreResult<()>;
}

pub(crate) fn encode<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    postcard::to_allocvec(v).map_err(StoreError::Encode)
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}
