//! The mount table: mounts added and removed, the cached copy of the
//! table that every path check reads, and which under-storage URIs a
//! mount may name.

use super::Namespace;
use super::change::META_NEXT_MOUNT_ID;
use super::change::{Change, new_inode};
use crate::master::command::{FsError, FsResult, Reply, Stamp};
use crate::master::metastore::{InodeKind, MountInfo, Op, PersistState, counter_op, read_counter};
use crate::path::WeirPath;
use std::sync::Arc;
use weir_api::MountSpec;

/// The cached mount table and a generation bumped by every invalidation,
/// so a load that raced with a change is never cached.
#[derive(Default)]
pub(super) struct MountCache {
    generation: u64,
    table: Option<Arc<Vec<MountInfo>>>,
}

impl Namespace {
    pub fn mounts(&self) -> FsResult<Vec<MountInfo>> {
        Ok(self.cached_mounts()?.as_ref().clone())
    }

    pub(super) fn cached_mounts(&self) -> FsResult<Arc<Vec<MountInfo>>> {
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
            let mp = WeirPath::parse(m.path())?;
            if path.starts_with(&mp) && best.is_none_or(|b| b.path().len() < m.path().len()) {
                best = Some(m);
            }
        }
        Ok(best.cloned())
    }

    /// Refuses a rename or link between two mounts (or a mount and the
    /// rest): each has its own under-storage.
    pub(super) fn one_mount(&self, a: &WeirPath, b: &WeirPath) -> FsResult<()> {
        let mount =
            |p| -> FsResult<Option<String>> { Ok(self.mount_of(p)?.map(|m| m.path().to_owned())) };
        if mount(a)? != mount(b)? {
            return Err(FsError::InvalidArgument(format!(
                "{a} and {b} are in different mounts"
            )));
        }
        Ok(())
    }

    pub(super) fn writable(&self, path: &WeirPath) -> FsResult<()> {
        match self.mount_of(path)? {
            Some(m) if m.spec.read_only => Err(FsError::ReadOnly(format!(
                "{path} is under read-only mount {}",
                m.path()
            ))),
            _ => Ok(()),
        }
    }

    pub(super) fn plan_mount(&self, c: &mut Change<'_>, spec: &MountSpec) -> FsResult<Reply> {
        let path = Self::parse(&spec.path)?;
        validate_ufs_uri(&spec.ufs_uri)?;
        let mounts = self.cached_mounts()?;
        for m in mounts.iter() {
            let mp = WeirPath::parse(m.path())?;
            if mp == path {
                return Err(FsError::AlreadyExists(format!("mount at {path}")));
            }
            if path.starts_with(&mp) || mp.starts_with(&path) {
                return Err(FsError::FailedPrecondition(format!(
                    "{path} overlaps mount {}",
                    m.path()
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
            Some(mut dir) if dir.is_dir() && self.store.children(dir.id, None, 1)?.is_empty() => {
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
        let mount_id = read_counter(self.store.as_ref(), META_NEXT_MOUNT_ID, 1)?;
        c.ops.push(counter_op(META_NEXT_MOUNT_ID, mount_id + 1));
        c.ops.push(Op::PutMount(MountInfo {
            spec: MountSpec {
                path: path.to_string(),
                ..spec.clone()
            },
            mount_id,
        }));
        Ok(Reply::Mounted { mount_id })
    }

    pub(super) fn plan_unmount(&self, c: &mut Change<'_>, path: &str) -> FsResult<Reply> {
        let path = Self::parse(path)?;
        if !self
            .cached_mounts()?
            .iter()
            .any(|m| m.path() == path.as_str())
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
                for (name, id) in page {
                    if let Some(child) = c.inode(id)? {
                        removed += c.remove_tree(dir.id, &name, &child)?;
                    }
                }
            }
            removed
        } else {
            c.remove_tree(dir.parent, &dir.name, &dir)?
        };
        Ok(Reply::Deleted { inodes: removed })
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
