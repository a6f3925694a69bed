//! The inode record: one file or directory of the namespace as the master
//! replicates it.

use crate::block::{BlockRange, blocks_of};
use serde::{Deserialize, Serialize};

pub use crate::block::InodeId;
/// The root directory's inode id.
pub const ROOT_ID: InodeId = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    File,
    Directory,
    /// A symbolic link found in the under-storage. Its target is its
    /// content: kept as the version of its fingerprint (`link:<target>`),
    /// so a new target is a new version. Appended last: the variant order
    /// is part of the stored encoding.
    Symlink,
    /// A fifo, socket or device file found in (or made in) the
    /// under-storage: no data; its kind and device number are its version
    /// (`node:<kind>:<rdev>`). Appended last, as `Symlink` was.
    Special,
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

    pub fn is_file(&self) -> bool {
        self.kind == InodeKind::File
    }

    /// A symbolic link's target; `None` for anything else.
    pub fn symlink_target(&self) -> Option<String> {
        if self.kind != InodeKind::Symlink {
            return None;
        }
        let fingerprint = crate::ufs::Fingerprint::parse(self.ufs_fingerprint.as_deref()?)?;
        Some(
            fingerprint
                .version
                .strip_prefix(crate::ufs::LINK_VERSION_PREFIX)?
                .to_owned(),
        )
    }

    /// A special file's kind and device number; `None` for anything else.
    pub fn node(&self) -> Option<(crate::ufs::NodeKind, u64)> {
        if self.kind != InodeKind::Special {
            return None;
        }
        let fingerprint = crate::ufs::Fingerprint::parse(self.ufs_fingerprint.as_deref()?)?;
        crate::ufs::NodeKind::parse_version(&fingerprint.version)
    }

    /// The file's blocks; none for a directory, a link or a special file.
    pub fn blocks(&self) -> impl Iterator<Item = BlockRange> + use<> {
        let length = if self.is_file() { self.length } else { 0 };
        blocks_of(self.id, length, self.block_size)
    }
}
