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

pub use crate::master::records::{
    Inode, InodeId, InodeKind, Job, JobId, MountInfo, PersistState, ROOT_ID,
};
use serde::{Deserialize, Serialize};

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
    DeleteMeta(String),
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

/// A `u64` kept under `key` in the meta column (counters, seeds), or
/// `default` when there is none.
pub fn read_counter(store: &dyn MetaStore, key: &str, default: u64) -> StoreResult<u64> {
    Ok(match store.meta(key)? {
        Some(bytes) if bytes.len() == 8 => u64::from_be_bytes(bytes.try_into().expect("8 bytes")),
        _ => default,
    })
}

/// The op that sets the `u64` under `key`.
pub fn counter_op(key: &str, v: u64) -> Op {
    Op::PutMeta(key.to_owned(), v.to_be_bytes().to_vec())
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
