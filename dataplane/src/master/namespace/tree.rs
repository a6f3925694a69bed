//! Commands on the inode tree: directories and files created, completed,
//! deleted, renamed, and their attributes changed.

use super::Namespace;
use super::change::{Change, new_child};
use crate::master::command::{AttrUpdate, FsError, FsResult, Reply, Stamp};
use crate::master::metastore::{Inode, InodeKind, ROOT_ID};
use crate::path::WeirPath;

impl Namespace {
    pub(super) fn plan_create_directory(
        &self,
        c: &mut Change<'_>,
        path: &str,
        recursive: bool,
        stamp: &Stamp,
    ) -> FsResult<Reply> {
        let path = Self::parse(path)?;
        self.writable(&path)?;
        if let Some(existing) = self.lookup(&path)? {
            return if existing.is_dir() && recursive {
                Ok(Reply::Inode(Box::new(existing)))
            } else {
                Err(FsError::AlreadyExists(path.to_string()))
            };
        }
        let parent = self.parent_for_create(c, &path, recursive, stamp)?;
        let name = path.name().expect("not root");
        let mut dir = new_child(&parent, name, InodeKind::Directory, stamp);
        // A directory made in the namespace has no listing to load.
        dir.synced_ms = Some(stamp.now_ms);
        Ok(Reply::Inode(Box::new(c.create(dir))))
    }

    pub(super) fn plan_create_file(
        &self,
        c: &mut Change<'_>,
        path: &str,
        recursive: bool,
        block_size: u64,
        stamp: &Stamp,
    ) -> FsResult<Reply> {
        let path = Self::parse(path)?;
        self.writable(&path)?;
        if block_size == 0 || block_size > (1 << 40) {
            return Err(FsError::InvalidArgument(format!(
                "block size {block_size} out of range"
            )));
        }
        if self.lookup(&path)?.is_some() {
            return Err(FsError::AlreadyExists(path.to_string()));
        }
        let parent = self.parent_for_create(c, &path, recursive, stamp)?;
        let mut file = new_child(
            &parent,
            path.name().expect("not root"),
            InodeKind::File,
            stamp,
        );
        file.block_size = block_size;
        Ok(Reply::Inode(Box::new(c.create(file))))
    }

    pub(super) fn plan_complete_file(
        &self,
        c: &mut Change<'_>,
        path: &str,
        length: u64,
        now_ms: u64,
    ) -> FsResult<Reply> {
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
        file.length = length;
        file.mtime_ms = now_ms;
        c.put(file.clone());
        Ok(Reply::Inode(Box::new(file)))
    }

    pub(super) fn plan_delete(
        &self,
        c: &mut Change<'_>,
        path: &str,
        recursive: bool,
    ) -> FsResult<Reply> {
        let path = Self::parse(path)?;
        if path.is_root() {
            return Err(FsError::InvalidArgument(
                "the root cannot be deleted".into(),
            ));
        }
        self.writable(&path)?;
        let inode = self.get(&path)?;
        if self.cached_mounts()?.iter().any(|m| {
            WeirPath::parse(m.path())
                .map(|mp| mp.starts_with(&path))
                .unwrap_or(false)
        }) {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is or contains a mount point; unmount first"
            )));
        }
        if inode.is_dir() && !recursive && !self.store.children(inode.id, None, 1)?.is_empty() {
            return Err(FsError::FailedPrecondition(format!(
                "directory {path} is not empty"
            )));
        }
        let dir = self.get(&path.parent().expect("not root"))?;
        let inodes = c.remove_tree(dir.id, path.name().expect("not root"), &inode)?;
        Ok(Reply::Deleted { inodes })
    }

    pub(super) fn plan_rename(
        &self,
        c: &mut Change<'_>,
        src: &str,
        dst: &str,
        now_ms: u64,
    ) -> FsResult<Reply> {
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
        self.one_mount(&src, &dst)?;
        if self
            .cached_mounts()?
            .iter()
            .any(|m| m.path() == src.as_str())
        {
            return Err(FsError::FailedPrecondition(format!(
                "{src} is a mount point"
            )));
        }
        let inode = self.get(&src)?;
        let (dst_parent, dst_name) = self.free_name(&dst)?;
        let src_parent = self.get(&src.parent().expect("not root"))?;
        let mut inode = c.move_name(
            (src_parent.id, src.name().expect("not root")),
            (dst_parent.id, dst_name),
            inode,
        )?;
        inode.mtime_ms = now_ms;
        c.put(inode.clone());
        Ok(Reply::Inode(Box::new(inode)))
    }

    pub(super) fn plan_set_attribute(
        &self,
        c: &mut Change<'_>,
        path: &str,
        update: &AttrUpdate,
    ) -> FsResult<Reply> {
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

    /// The directory a new name `path` goes in, and the name: refused
    /// when the name is taken or the directory missing or a file.
    pub(super) fn free_name<'p>(&self, path: &'p WeirPath) -> FsResult<(Inode, &'p str)> {
        if self.lookup(path)?.is_some() {
            return Err(FsError::AlreadyExists(path.to_string()));
        }
        let (Some(dir_path), Some(name)) = (path.parent(), path.name()) else {
            return Err(FsError::AlreadyExists("/".into()));
        };
        let dir = self
            .lookup(&dir_path)?
            .ok_or_else(|| FsError::NotFound(format!("parent directory {dir_path}")))?;
        if !dir.is_dir() {
            return Err(FsError::FailedPrecondition(format!("{dir_path} is a file")));
        }
        Ok((dir, name))
    }

    /// Resolves the parent of `path`, creating missing directories when
    /// `recursive`; fails when a component is a file.
    pub(super) fn parent_for_create(
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
                    dir = c.create(new_child(&dir, name, InodeKind::Directory, stamp));
                }
                None => return Err(FsError::NotFound(format!("parent directory {at}"))),
            }
        }
        Ok(dir)
    }
}
