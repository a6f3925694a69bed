//! Namespace changes the under-storage must see: `mkdir`, `rm`, `rmdir`,
//! `mv`, `chmod`, `chown`, `touch`, `ln -s`, `ln`, `mknod` and "this file
//! is persisted". Each is checked against the
//! namespace first (nothing is done that the namespace would refuse), done
//! in the under-storage, and only then proposed, so Weir never shows a
//! tree the under-storage does not have and the next listing brings back
//! nothing that was removed.
//!
//! What reaches the under-storage does not depend on the write type for
//! what it already holds: deleting or renaming a file it has always
//! happens there. New directories reach it unless the mount is
//! `MUST_CACHE`, whose new files and directories live in Weir only.

use super::entry;
use super::{MetadataSync, ufs_path};
use crate::master::command::{AttrUpdate, Command, FsError, Reply, Stamp};
use crate::master::error::MasterResult;
use crate::master::metastore::{Inode, MountInfo, PersistState};
use crate::path::WeirPath;
use crate::ufs::{AttrChange, NodeKind, UfsStatus};
use futures::TryStreamExt;
use weir_api::WriteType;

/// A mode or owner change kept in the namespace alone.
fn weir_owned(change: &AttrChange) -> AttrUpdate {
    AttrUpdate {
        mode: change.mode,
        owner: change.uid.map(|u| u.to_string()),
        group: change.gid.map(|g| g.to_string()),
        ..AttrUpdate::default()
    }
}

/// What `ln -s`, `mknod` and `ln` make.
#[derive(Debug, Clone, Copy)]
pub enum NewEntry<'a> {
    Symlink(&'a str),
    Node(NodeKind, u64),
    /// A second name for this file.
    HardLink(&'a WeirPath),
}

impl MetadataSync {
    /// The mount below which `path` lies, when the under-storage is to see
    /// changes of `path` (the mount point itself is the mount's, not a
    /// user's).
    fn ufs_mount_of(&self, path: &WeirPath) -> MasterResult<Option<MountInfo>> {
        Ok(self
            .namespace
            .mount_of(path)?
            .filter(|m| m.path() != path.as_str() && !m.spec.read_only))
    }

    /// Whether the under-storage may hold `inode` (or, for a directory,
    /// something below it).
    fn in_ufs(inode: &Inode) -> bool {
        inode.is_dir() || inode.persist == PersistState::Persisted
    }

    /// `rm`/`rmdir`: the under-storage first, then the namespace. A
    /// directory that the under-storage holds entries of is not empty,
    /// whether or not Weir has listed them.
    pub async fn delete(&self, path: &WeirPath, recursive: bool) -> MasterResult<Reply> {
        let cmd = Command::Delete {
            path: path.to_string(),
            recursive,
        };
        self.namespace.plan(&cmd)?;
        let mut inode = self.namespace.get(path)?;
        let _turn = self.turns.of(&inode).await;
        if _turn.is_some() {
            inode = self.namespace.get(path)?;
        }
        if let Some(mount) = self.ufs_mount_of(path)?
            && Self::in_ufs(&inode)
        {
            let store = self.store(&mount)?;
            let at = ufs_path(&mount, path)?;
            if !inode.is_dir() {
                store.delete(&at).await?;
            } else if recursive {
                store.delete_all(&at).await?;
            } else {
                if let Some(child) = store.list(&at).try_next().await? {
                    return Err(FsError::FailedPrecondition(format!(
                        "directory {path} is not empty: the under-storage has {} in it",
                        child.name
                    ))
                    .into());
                }
                store.delete(&at).await?;
            }
            tracing::info!(%path, recursive, ufs = %at.as_str(), "deleted in the under-storage");
            self.parent_changed(path);
        }
        let reply = match self.proposer.write(cmd).await {
            Ok(reply) => reply,
            // A listing noticed the deletion first.
            Err(e) if e.is_not_found() => Reply::Deleted { inodes: 0 },
            Err(e) => return Err(e),
        };
        if !inode.is_dir() {
            self.names_left(&inode).await?;
        }
        Ok(reply)
    }

    /// After a name of `inode` went: a file with names left changed its
    /// change time in the under-storage (part of its version), and its
    /// content is the one Weir holds.
    async fn names_left(&self, inode: &Inode) -> MasterResult<()> {
        let Some(path) = self.namespace.path_of(inode.id)? else {
            return Ok(());
        };
        if let Some(mount) = self.ufs_mount_of(&path)?
            && let Some(now) = self.store(&mount)?.stat(&ufs_path(&mount, &path)?).await?
            && now.length == inode.length
        {
            self.set_version(&path, now.fingerprint().to_string())
                .await?;
        }
        Ok(())
    }

    /// `mv`: the under-storage first (S3: a copy of every object, then
    /// the deletion of the originals), then the namespace, then the
    /// version the under-storage now reports for a moved file, so its
    /// cached blocks stay valid. A file replaces a file at `dst`, as
    /// rename(2) says.
    pub async fn rename(&self, src: &WeirPath, dst: &WeirPath, now_ms: u64) -> MasterResult<Inode> {
        let mut moving = self.namespace.get(src)?;
        let replaced = self.namespace.lookup(dst)?;
        if let Some(old) = replaced
            && !old.is_dir()
            && !moving.is_dir()
            && old.id != moving.id
        {
            // Everything but the name taken is checked (the same
            // directory, so the same mount) before anything is deleted.
            let parent = dst
                .parent()
                .ok_or_else(|| FsError::InvalidArgument("the root".into()))?;
            let beside = parent
                .child(&format!(".weir-rename-{}", moving.id))
                .map_err(FsError::from)?;
            self.namespace.plan(&Command::Rename {
                src: src.to_string(),
                dst: beside.to_string(),
                now_ms,
            })?;
            self.delete(dst, false).await?;
        }
        // Taken after the replaced file's own turn (in `delete`), so two
        // renames over each other's files never wait for each other.
        let _turn = self.turns.of(&moving).await;
        if _turn.is_some() {
            moving = self.namespace.get(src)?;
        }
        let cmd = Command::Rename {
            src: src.to_string(),
            dst: dst.to_string(),
            now_ms,
        };
        self.namespace.plan(&cmd)?;
        let mount = self.ufs_mount_of(src)?;
        let moved_in_ufs = match &mount {
            Some(mount) if Self::in_ufs(&moving) => {
                let store = self.store(mount)?;
                let (from, to) = (ufs_path(mount, src)?, ufs_path(mount, dst)?);
                match store.rename(&from, &to).await {
                    Ok(()) => {
                        tracing::info!(%src, %dst, "renamed in the under-storage");
                        self.parent_changed(src);
                        self.parent_changed(dst);
                        true
                    }
                    // A directory made in Weir only (MUST_CACHE).
                    Err(crate::ufs::UfsError::NotFound(_))
                        if moving.persist != PersistState::Persisted =>
                    {
                        false
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ => false,
        };
        let moved = match self.proposer.write(cmd).await {
            Ok(Reply::Inode(inode)) => *inode,
            Ok(other) => {
                return Err(FsError::Store(format!("unexpected reply {other:?}")).into());
            }
            // A listing saw the move first: the new path is in the
            // under-storage, so it resolves from there.
            Err(e) if moved_in_ufs && (e.is_not_found() || e.is_already_exists()) => {
                return self
                    .resolve(dst)
                    .await?
                    .ok_or_else(|| FsError::NotFound(dst.to_string()).into());
            }
            Err(e) => return Err(e),
        };
        if moved_in_ufs
            && !moved.is_dir()
            && let Some(mount) = &mount
            && let Some(now) = self.store(mount)?.stat(&ufs_path(mount, dst)?).await?
            && now.length == moved.length
        {
            return self.set_version(dst, now.fingerprint().to_string()).await;
        }
        Ok(moved)
    }

    /// `mkdir`: in the under-storage too unless the mount keeps new
    /// things in Weir only.
    pub async fn create_directory(&self, path: &WeirPath, cmd: Command) -> MasterResult<Inode> {
        self.namespace.plan(&cmd)?;
        let mount = self
            .ufs_mount_of(path)?
            .filter(|m| m.spec.write_type != WriteType::MustCache);
        if let Some(mount) = &mount {
            self.store(mount)?
                .create_dir(&ufs_path(mount, path)?)
                .await?;
        }
        let created = match self.proposer.write(cmd).await? {
            Reply::Inode(inode) => *inode,
            other => return Err(FsError::Store(format!("unexpected reply {other:?}")).into()),
        };
        let Some(mount) = mount else {
            return Ok(created);
        };
        self.stamp_in_store(&mount, path, &Stamp::of(&created))
            .await?;
        self.parent_changed(path);
        let update = AttrUpdate {
            persist: Some(PersistState::Persisted),
            ..AttrUpdate::default()
        };
        match self
            .proposer
            .write(Command::SetAttribute {
                path: path.to_string(),
                update,
            })
            .await?
        {
            Reply::Inode(inode) => Ok(*inode),
            other => Err(FsError::Store(format!("unexpected reply {other:?}")).into()),
        }
    }

    /// `chmod`, `chown`, `touch`: in the under-storage first where it has
    /// the path (refused, with the reason, where the store keeps no such
    /// attributes), then in the namespace as the store now reports them;
    /// what only Weir holds changes in the namespace alone. The content is
    /// the same, so the file keeps its inode and cached blocks.
    pub async fn change_attributes(
        &self,
        path: &WeirPath,
        change: AttrChange,
        now_ms: u64,
    ) -> MasterResult<Inode> {
        let inode = self.namespace.get(path)?;
        if let Some(mount) = self.namespace.mount_of(path)?
            && mount.spec.read_only
        {
            return Err(FsError::ReadOnly(format!("{path} is on a read-only mount")).into());
        }
        if let Some(mount) = self.ufs_mount_of(path)?
            && Self::in_ufs(&inode)
        {
            let store = self.store(&mount)?;
            let at = ufs_path(&mount, path)?;
            match store.set_attributes(&at, &change).await {
                Ok(()) => {}
                // A store without modes or owners (S3): they live in the
                // namespace, which re-syncs leave as they are. Its mtime
                // is the store's own, so `touch` is still refused.
                Err(crate::ufs::UfsError::Unsupported { .. }) if change.mtime_ms.is_none() => {
                    return self.set_attribute(path, weir_owned(&change)).await;
                }
                Err(e) => return Err(e.into()),
            }
            let Some(now) = store.stat(&at).await? else {
                return Err(FsError::NotFound(format!(
                    "{path}: gone from the under-storage while its attributes changed"
                ))
                .into());
            };
            if !inode.is_dir() {
                // The change moved the file's ctime, part of its version;
                // the content is the one Weir holds.
                self.set_version(path, now.fingerprint().to_string())
                    .await?;
            }
            return self.load_as_stored(path, now, now_ms).await;
        }
        if change.mtime_ms.is_some() {
            return Err(FsError::FailedPrecondition(format!(
                "{path}: the modification time of a file only Weir holds is the time it \
                 was written; it is not set"
            ))
            .into());
        }
        self.set_attribute(path, weir_owned(&change)).await
    }

    /// `ln -s`, `mknod`/`mkfifo` and `ln`: made in the under-storage (a
    /// special file with `stamp`'s mode and owner), then loaded as the
    /// store reports it. Weir holds none of these of its own, so where the
    /// path has no writable under-storage (or one that keeps new entries
    /// in Weir only), or the store holds no such thing, it is refused.
    pub async fn create_entry(
        &self,
        path: &WeirPath,
        new: NewEntry<'_>,
        stamp: &Stamp,
    ) -> MasterResult<Inode> {
        if self.namespace.lookup(path)?.is_some() {
            return Err(FsError::AlreadyExists(path.to_string()).into());
        }
        let Some(dir) = path.parent() else {
            return Err(FsError::InvalidArgument("the root".into()).into());
        };
        let dir = self.namespace.get(&dir)?;
        if !dir.is_dir() {
            return Err(FsError::FailedPrecondition(format!(
                "{} is not a directory",
                path.parent().unwrap_or_else(WeirPath::root)
            ))
            .into());
        }
        let stamp = &crate::master::namespace::inherited(&dir, stamp, false);
        if let Some(mount) = self.namespace.mount_of(path)?
            && mount.spec.read_only
        {
            return Err(FsError::ReadOnly(format!("{path} is on a read-only mount")).into());
        }
        let Some(mount) = self
            .ufs_mount_of(path)?
            .filter(|m| m.spec.write_type != WriteType::MustCache)
        else {
            return Err(FsError::FailedPrecondition(format!(
                "{path}: links and special files live in an under-storage, and this path \
                 has none that Weir writes to"
            ))
            .into());
        };
        let store = self.store(&mount)?;
        let at = ufs_path(&mount, path)?;
        match new {
            NewEntry::Symlink(target) => store.symlink(&at, target).await?,
            NewEntry::Node(kind, rdev) => store.make_node(&at, kind, rdev).await?,
            NewEntry::HardLink(existing) => {
                let cmd = Command::Link {
                    src: existing.to_string(),
                    dst: path.to_string(),
                };
                // A directory, another mount, a name taken: refused
                // before the under-storage is touched.
                self.namespace.plan(&cmd)?;
                let file = self.namespace.get(existing)?;
                if !Self::in_ufs(&file) {
                    return Err(FsError::FailedPrecondition(format!(
                        "{existing} is not in the under-storage yet; a hard link needs it there"
                    ))
                    .into());
                }
                let from = ufs_path(&mount, existing)?;
                store.hard_link(&from, &at).await?;
                self.parent_changed(path);
                self.proposer.write(cmd).await?;
                // The link moved the file's change time, part of its
                // version; its content is the one Weir holds.
                return match store.stat(&from).await? {
                    Some(now) => self.set_version(path, now.fingerprint().to_string()).await,
                    None => Ok(self.namespace.get(path)?),
                };
            }
        }
        self.parent_changed(path);
        let stamped = match new {
            NewEntry::Node(..) => self.stamp_in_store(&mount, path, stamp).await?,
            _ => store.stat(&at).await?,
        };
        let Some(now) = stamped else {
            return Err(FsError::NotFound(format!("{path}: gone right after it was made")).into());
        };
        self.load_as_stored(path, now, stamp.now_ms).await
    }

    /// `path` loaded into the namespace as the under-storage reports it
    /// (`now`, just stat'ed), and the inode that results.
    async fn load_as_stored(
        &self,
        path: &WeirPath,
        now: UfsStatus,
        now_ms: u64,
    ) -> MasterResult<Inode> {
        let (Some(dir), Some(name)) = (path.parent(), path.name()) else {
            return Err(FsError::InvalidArgument("the root".into()).into());
        };
        self.proposer
            .write(Command::LoadVersionedListing {
                dir: dir.to_string(),
                entries: vec![entry(UfsStatus {
                    name: name.to_owned(),
                    ..now
                })],
                vanished: vec![],
                complete: false,
                now_ms,
            })
            .await?;
        Ok(self.namespace.get(path)?)
    }

    /// Marks the file at `path` persisted, with the version the
    /// under-storage reports for it now; refused when the under-storage
    /// does not have it.
    pub async fn mark_persisted(&self, path: &WeirPath) -> MasterResult<Inode> {
        let mut inode = self.namespace.get(path)?;
        let _turn = self.turns.of(&inode).await;
        if _turn.is_some() {
            // Renamed or deleted while it waited: the caller finds where.
            inode = self.namespace.get(path)?;
        }
        let mount = self.namespace.mount_of(path)?;
        let Some(mount) = mount.filter(|_| !inode.is_dir()) else {
            return self
                .set_attribute(
                    path,
                    AttrUpdate {
                        persist: Some(PersistState::Persisted),
                        ..AttrUpdate::default()
                    },
                )
                .await;
        };
        self.parent_changed(path);
        let Some(now) = self
            .stamp_in_store(&mount, path, &Stamp::of(&inode))
            .await?
        else {
            return Err(FsError::FailedPrecondition(format!(
                "{path}: the under-storage has no {} {}; it stays unpersisted",
                mount.spec.ufs_uri,
                ufs_path(&mount, path)?.as_str()
            ))
            .into());
        };
        self.set_version(path, now.fingerprint().to_string()).await
    }

    /// What Weir made (a file it wrote, a directory) gets in the store the
    /// mode and owner it has in the namespace (its creator's), where the
    /// store keeps them; then the store's status of it, `None` when the
    /// store does not have it.
    async fn stamp_in_store(
        &self,
        mount: &MountInfo,
        path: &WeirPath,
        made: &Stamp,
    ) -> MasterResult<Option<UfsStatus>> {
        let (store, at) = (self.store(mount)?, ufs_path(mount, path)?);
        let Some(now) = store.stat(&at).await? else {
            return Ok(None);
        };
        let id = |name: &str| {
            if name == "root" {
                Some(0)
            } else {
                name.parse().ok()
            }
        };
        let change = AttrChange {
            uid: id(&made.owner).filter(|u| now.uid.is_some_and(|n| n != *u)),
            gid: id(&made.group).filter(|g| now.gid.is_some_and(|n| n != *g)),
            mode: Some(made.mode & 0o7777).filter(|m| now.mode.is_some_and(|n| n != *m)),
            mtime_ms: None,
        };
        if change.is_empty() {
            return Ok(Some(now));
        }
        store.set_attributes(&at, &change).await?;
        Ok(store.stat(&at).await?)
    }

    async fn set_version(&self, path: &WeirPath, fingerprint: String) -> MasterResult<Inode> {
        match self
            .proposer
            .write(Command::SetVersion {
                path: path.to_string(),
                fingerprint,
            })
            .await?
        {
            Reply::Inode(inode) => Ok(*inode),
            other => Err(FsError::Store(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn set_attribute(&self, path: &WeirPath, update: AttrUpdate) -> MasterResult<Inode> {
        match self
            .proposer
            .write(Command::SetAttribute {
                path: path.to_string(),
                update,
            })
            .await?
        {
            Reply::Inode(inode) => Ok(*inode),
            other => Err(FsError::Store(format!("unexpected reply {other:?}")).into()),
        }
    }
}
