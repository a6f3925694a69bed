//! The commands the masters replicate, what applying one returns, and the
//! errors it can fail with. A command carries everything that must be the
//! same on every replica (timestamps, listing results); the variant order
//! is part of the log's encoding, so new commands go at the end.

use super::metastore::StoreError;
use super::records::{Inode, Job, JobId, JobProgress, JobSpec, JobState, PersistState};
use crate::path::PathError;
use crate::ufs::Fingerprint;
use serde::{Deserialize, Serialize};
use std::fmt;
use weir_api::MountSpec;

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
    /// The under-storage refused the caller (its permissions).
    #[error("permission denied: {0}")]
    Denied(String),
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

impl Stamp {
    /// The owner, group and mode `inode` has (stamped at its mtime).
    pub fn of(inode: &crate::master::metastore::Inode) -> Self {
        Stamp {
            owner: inode.owner.clone(),
            group: inode.group.clone(),
            mode: inode.mode,
            now_ms: inode.mtime_ms,
        }
    }
}

/// One entry of an under-storage listing, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UfsEntry {
    pub name: String,
    pub is_dir: bool,
    pub length: u64,
    pub mtime_ms: u64,
    /// The store's identity of the content (ETag; inode and change time).
    pub version: String,
    /// Permission bits where the store keeps them.
    pub mode: Option<u32>,
    /// Owner and group ids where the store keeps them.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A symbolic link's target.
    pub link: Option<String>,
}

impl UfsEntry {
    /// What tells one version of the entry from another.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            length: self.length,
            mtime_ms: self.mtime_ms,
            version: self.version.clone(),
        }
    }
}

/// A listing entry as earlier releases logged it (no version); kept so
/// their Raft logs still replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyUfsEntry {
    pub name: String,
    pub is_dir: bool,
    pub length: u64,
    pub mtime_ms: u64,
}

impl From<&LegacyUfsEntry> for UfsEntry {
    fn from(e: &LegacyUfsEntry) -> Self {
        UfsEntry {
            name: e.name.clone(),
            is_dir: e.is_dir,
            length: e.length,
            mtime_ms: e.mtime_ms,
            version: String::new(),
            mode: None,
            uid: None,
            gid: None,
            link: None,
        }
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
        entries: Vec<LegacyUfsEntry>,
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
    /// [`Command::LoadListing`] with each entry's version: what this
    /// release proposes.
    LoadVersionedListing {
        dir: String,
        entries: Vec<UfsEntry>,
        vanished: Vec<String>,
        complete: bool,
        now_ms: u64,
    },
    /// The under-storage version of a file Weir itself just changed there
    /// (renamed, written through): recorded as its own, with no new inode
    /// id, so its cached blocks stay valid.
    SetVersion {
        path: String,
        fingerprint: String,
    },
    /// `dst` becomes another name of the file at `src` (a hard link): one
    /// inode, so one set of cached blocks and one set of attributes.
    Link {
        src: String,
        dst: String,
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

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateDirectory { path, .. } => write!(f, "mkdir {path}"),
            Command::CreateFile { path, .. } => write!(f, "create {path}"),
            Command::CompleteFile { path, length, .. } => write!(f, "complete {path} ({length} B)"),
            Command::Delete { path, recursive } => write!(f, "delete {path} recursive={recursive}"),
            Command::Rename { src, dst, .. } => write!(f, "rename {src} -> {dst}"),
            Command::SetAttribute { path, .. } => write!(f, "setattr {path}"),
            Command::Mount(m) => write!(f, "mount {} at {}", m.ufs_uri, m.path),
            Command::Unmount { path } => write!(f, "unmount {path}"),
            Command::LoadListing { dir, entries, .. } => {
                write!(f, "load {} entries into {dir}", entries.len())
            }
            Command::Noop => f.write_str("noop"),
            Command::SeedInodeIds { start } => write!(f, "seed inode ids at {start}"),
            Command::SubmitJob { spec, .. } => {
                write!(f, "submit {} job for {:?}", spec.kind.as_str(), spec.paths)
            }
            Command::UpdateJob { id, state, .. } => {
                write!(f, "job {id} progress ({})", state.as_str())
            }
            Command::CancelJob { id, .. } => write!(f, "cancel job {id}"),
            Command::LoadVersionedListing { dir, entries, .. } => {
                write!(f, "load {} entries into {dir}", entries.len())
            }
            Command::SetVersion { path, fingerprint } => {
                write!(f, "version of {path} is {fingerprint}")
            }
            Command::Link { src, dst } => write!(f, "link {dst} to {src}"),
        }
    }
}
