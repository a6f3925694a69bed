//! The namespace: the inode tree and the mount table as the master's
//! replicated state machine holds them. Reads answer from the store;
//! commands are planned here into one batch of store changes, which
//! [`crate::master::state`] writes (with the Raft applied index) at once.
//! Job records are not the namespace's: see [`crate::master::jobs::table`].

mod change;
mod ids;
mod listing;
mod mounts;
mod names;
#[cfg(test)]
mod names_tests;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
mod tree;

pub(crate) use change::{follow_attributes, inherited};
pub use ids::{SEEDED_IDS_FLOOR, random_id_seed};
pub use mounts::validate_ufs_uri;

use crate::master::command::{Command, FsError, FsResult, Reply, Stamp, UfsEntry};
use crate::master::metastore::{Inode, InodeId, InodeKind, MetaStore, Op, ROOT_ID, counter_op};
use crate::path::WeirPath;
use change::META_INODE_COUNT;
use change::{Change, new_inode};
use mounts::MountCache;
use std::sync::Arc;

/// The namespace over a metadata store.
#[derive(Clone)]
pub struct Namespace {
    store: Arc<dyn MetaStore>,
    /// The mount table, read on every path check; reloaded from the store
    /// after a command that changes it or a snapshot install.
    mount_cache: Arc<std::sync::RwLock<MountCache>>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace").finish_non_exhaustive()
    }
}

/// A namespace command's effect: its store changes and its reply.
pub struct Planned {
    pub ops: Vec<Op>,
    pub reply: Reply,
    /// The mount table changed: the cached copy must be reloaded once the
    /// batch is written.
    pub mounts_changed: bool,
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
            store.write(vec![Op::PutInode(root), counter_op(META_INODE_COUNT, 1)])?;
        }
        Ok(Self {
            store,
            mount_cache: Arc::default(),
        })
    }

    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
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

    /// One page of a directory listing, after `start_after`: each inode
    /// as it is named here (a file with several names has one record,
    /// named by one of them).
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
        for (name, id) in self.store.children(dir.id, start_after, limit)? {
            if let Some(mut i) = self.store.inode(id)? {
                i.parent = dir.id;
                i.name = name;
                out.push(i);
            }
        }
        Ok(out)
    }

    fn parse(raw: &str) -> FsResult<WeirPath> {
        Ok(WeirPath::parse(raw)?)
    }

    /// Plans one command on the tree or the mount table; nothing is
    /// written. Job commands are refused: they are the job table's.
    pub fn plan(&self, cmd: &Command) -> FsResult<Planned> {
        let mut c = Change::new(self.store.as_ref())?;
        let reply = match cmd {
            Command::Noop => Reply::Done,
            Command::SeedInodeIds { start } => self.plan_seed(&mut c, *start)?,
            Command::CreateDirectory {
                path,
                recursive,
                stamp,
            } => self.plan_create_directory(&mut c, path, *recursive, stamp)?,
            Command::CreateFile {
                path,
                recursive,
                block_size,
                stamp,
            } => self.plan_create_file(&mut c, path, *recursive, *block_size, stamp)?,
            Command::CompleteFile {
                path,
                length,
                now_ms,
            } => self.plan_complete_file(&mut c, path, *length, *now_ms)?,
            Command::Delete { path, recursive } => self.plan_delete(&mut c, path, *recursive)?,
            Command::Rename { src, dst, now_ms } => self.plan_rename(&mut c, src, dst, *now_ms)?,
            Command::SetAttribute { path, update } => {
                self.plan_set_attribute(&mut c, path, update)?
            }
            Command::Mount(spec) => self.plan_mount(&mut c, spec)?,
            Command::Unmount { path } => self.plan_unmount(&mut c, path)?,
            Command::LoadListing {
                dir,
                entries,
                vanished,
                complete,
                now_ms,
            } => {
                let entries: Vec<UfsEntry> = entries.iter().map(UfsEntry::from).collect();
                self.plan_load_listing(&mut c, dir, &entries, vanished, *complete, *now_ms)?
            }
            Command::LoadVersionedListing {
                dir,
                entries,
                vanished,
                complete,
                now_ms,
            } => self.plan_load_listing(&mut c, dir, entries, vanished, *complete, *now_ms)?,
            Command::SetVersion { path, fingerprint } => {
                self.plan_set_version(&mut c, path, fingerprint)?
            }
            Command::Link { src, dst } => self.plan_link(&mut c, src, dst)?,
            Command::SubmitJob { .. } | Command::UpdateJob { .. } | Command::CancelJob { .. } => {
                return Err(FsError::InvalidArgument(format!(
                    "{cmd} is a job command, not a namespace command"
                )));
            }
        };
        let mounts_changed = c
            .ops
            .iter()
            .any(|op| matches!(op, Op::PutMount(_) | Op::DeleteMount(_)));
        Ok(Planned {
            ops: c.into_ops()?,
            reply,
            mounts_changed,
        })
    }
}
