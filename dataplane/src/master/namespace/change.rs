//! One command's changes to the inode tree, gathered before they are
//! written in one batch: later steps of a command see what earlier steps
//! did (the store does not show the batch being built), and new inodes
//! take ids from the replicated counter.

use crate::block::DEFAULT_BLOCK_SIZE;
use crate::master::command::{FsResult, Stamp, UfsEntry};
use crate::master::metastore::{
    Inode, InodeId, InodeKind, MetaStore, Op, PersistState, ROOT_ID, counter_op, read_counter,
};
use std::collections::BTreeMap;

/// The counters a batch advances, kept in the store's meta column.
pub(super) const META_NEXT_ID: &str = "next_inode_id";
pub(super) const META_INODE_COUNT: &str = "inode_count";
pub(super) const META_NEXT_MOUNT_ID: &str = "next_mount_id";

/// Changes one command makes, gathered before they are written in one batch.
pub(super) struct Change<'a> {
    pub store: &'a dyn MetaStore,
    pub ops: Vec<Op>,
    pub next_id: u64,
    inode_delta: i64,
    /// Inodes written (or deleted: `None`) earlier in this batch, so later
    /// steps see them.
    pending: BTreeMap<InodeId, Option<Inode>>,
    pending_edges: BTreeMap<(InodeId, String), Option<InodeId>>,
    /// Names beyond the first of inodes this batch linked or unlinked
    /// (see [`super::names`]).
    pub(super) pending_names: BTreeMap<InodeId, Vec<(InodeId, String)>>,
}

impl<'a> Change<'a> {
    pub fn new(store: &'a dyn MetaStore) -> FsResult<Self> {
        Ok(Self {
            store,
            ops: Vec::new(),
            next_id: read_counter(store, META_NEXT_ID, ROOT_ID + 1)?,
            inode_delta: 0,
            pending: BTreeMap::new(),
            pending_edges: BTreeMap::new(),
            pending_names: BTreeMap::new(),
        })
    }

    pub fn inode(&self, id: InodeId) -> FsResult<Option<Inode>> {
        if let Some(i) = self.pending.get(&id) {
            return Ok(i.clone());
        }
        Ok(self.store.inode(id)?)
    }

    pub fn child(&self, parent: InodeId, name: &str) -> FsResult<Option<InodeId>> {
        if let Some(c) = self.pending_edges.get(&(parent, name.to_owned())) {
            return Ok(*c);
        }
        Ok(self.store.child(parent, name)?)
    }

    pub fn put(&mut self, inode: Inode) {
        self.pending.insert(inode.id, Some(inode.clone()));
        self.ops.push(Op::PutInode(inode));
    }

    pub fn create(&mut self, mut inode: Inode) -> Inode {
        inode.id = self.next_id;
        self.next_id += 1;
        self.inode_delta += 1;
        self.link(inode.parent, &inode.name, inode.id);
        self.put(inode.clone());
        inode
    }

    pub fn link(&mut self, parent: InodeId, name: &str, child: InodeId) {
        self.pending_edges
            .insert((parent, name.to_owned()), Some(child));
        self.ops.push(Op::PutEdge {
            parent,
            name: name.to_owned(),
            child,
        });
    }

    pub fn unlink(&mut self, parent: InodeId, name: &str) {
        self.pending_edges.insert((parent, name.to_owned()), None);
        self.ops.push(Op::DeleteEdge {
            parent,
            name: name.to_owned(),
        });
    }

    /// Removes the entry `name` of `parent` (the inode `inode`) and
    /// everything below it; returns how many inodes went. A file with
    /// other names loses this one and stays.
    pub fn remove_tree(&mut self, parent: InodeId, name: &str, inode: &Inode) -> FsResult<u64> {
        let mut removed = 0;
        let mut stack = vec![(parent, name.to_owned(), inode.clone())];
        while let Some((parent, name, node)) = stack.pop() {
            if node.is_dir() {
                let mut cursor: Option<String> = None;
                loop {
                    let page = self.store.children(node.id, cursor.as_deref(), 1024)?;
                    let Some((last, _)) = page.last() else { break };
                    cursor = Some(last.clone());
                    for (child_name, id) in page {
                        // Skip what this command already unlinked: the
                        // store does not show the batch being built.
                        if self.child(node.id, &child_name)? != Some(id) {
                            continue;
                        }
                        if let Some(child) = self.inode(id)? {
                            stack.push((node.id, child_name, child));
                        }
                    }
                }
            }
            if self.remove_name(parent, &name, node.id)? {
                removed += 1;
            }
        }
        self.inode_delta -= removed as i64;
        Ok(removed)
    }

    /// Drops the inode `id` from the batch's view and the store.
    pub(super) fn delete_inode(&mut self, id: InodeId) {
        self.ops.push(Op::DeleteInode(id));
        self.pending.insert(id, None);
    }

    /// The batch: every change, then the id counter and inode count.
    pub fn into_ops(mut self) -> FsResult<Vec<Op>> {
        let count = read_counter(self.store, META_INODE_COUNT, 1)?;
        self.ops.push(counter_op(META_NEXT_ID, self.next_id));
        self.ops.push(counter_op(
            META_INODE_COUNT,
            (count as i64 + self.inode_delta).max(0) as u64,
        ));
        Ok(self.ops)
    }
}

/// `stamp` as a new entry of `dir` gets it: in a set-group-id directory
/// the directory's group, and a new directory is set-group-id too, as
/// POSIX file systems do.
pub(crate) fn inherited(dir: &Inode, stamp: &Stamp, is_dir: bool) -> Stamp {
    let mut stamp = stamp.clone();
    if dir.mode & libc::S_ISGID != 0 {
        stamp.group = dir.group.clone();
        if is_dir {
            stamp.mode |= libc::S_ISGID;
        }
    }
    stamp
}

/// A new entry `name` of `dir`, made by `stamp` (see [`inherited`]).
pub(super) fn new_child(dir: &Inode, name: &str, kind: InodeKind, stamp: &Stamp) -> Inode {
    let stamp = inherited(dir, stamp, kind == InodeKind::Directory);
    new_inode(dir.id, name, kind, &stamp)
}

pub(super) fn new_inode(parent: InodeId, name: &str, kind: InodeKind, stamp: &Stamp) -> Inode {
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

impl UfsEntry {
    /// What the entry is in the namespace.
    pub(super) fn kind(&self) -> InodeKind {
        if self.is_dir {
            InodeKind::Directory
        } else if self.link.is_some() {
            InodeKind::Symlink
        } else if crate::ufs::NodeKind::parse_version(&self.version).is_some() {
            InodeKind::Special
        } else {
            InodeKind::File
        }
    }
}

/// The mode an entry found in the under-storage shows: the store's own
/// where it keeps one (FUSE mounts are nosuid, so a set-user-id bit
/// grants nothing), else one every user may read (never writable by
/// others, so the kernel's permission checks never widen a store's).
pub(super) fn ufs_mode(e: &UfsEntry) -> u32 {
    match e.mode {
        Some(m) => m & 0o7777,
        None if e.is_dir => 0o755,
        None => 0o644,
    }
}

/// Whether `inode` shows what the store says of `e` (mode, owner, group,
/// and the mtime of files and of a local store's directories); sets it
/// when not, and says so.
pub(crate) fn follow_attributes(inode: &mut Inode, e: &UfsEntry) -> bool {
    let before = (
        inode.mode,
        inode.owner.clone(),
        inode.group.clone(),
        inode.mtime_ms,
    );
    // A store without modes (S3) keeps the mode Weir gave what it made
    // (its creator's); what Weir only found there has the default.
    if let Some(mode) = e.mode {
        inode.mode = mode & 0o7777;
    }
    if let Some(uid) = e.uid {
        inode.owner = uid.to_string();
    }
    if let Some(gid) = e.gid {
        inode.group = gid.to_string();
    }
    // A directory's mtime is the store's where the store keeps real
    // directories (with modes); an object store's prefixes have none.
    if !e.is_dir || e.mode.is_some() {
        inode.mtime_ms = e.mtime_ms;
    }
    before
        != (
            inode.mode,
            inode.owner.clone(),
            inode.group.clone(),
            inode.mtime_ms,
        )
}

/// An inode for an entry found in the under-storage, owned as the store
/// says where it keeps owners (by id), else like its directory.
pub(super) fn ufs_inode(dir: &Inode, e: &UfsEntry) -> Inode {
    let kind = e.kind();
    let stamp = Stamp {
        mode: ufs_mode(e),
        owner: dir.owner.clone(),
        group: dir.group.clone(),
        now_ms: e.mtime_ms,
    };
    let mut i = new_inode(dir.id, &e.name, kind, &stamp);
    follow_attributes(&mut i, e);
    i.length = if e.is_dir { 0 } else { e.length };
    i.completed = true;
    i.persist = PersistState::Persisted;
    i.ufs_fingerprint = (!e.is_dir).then(|| e.fingerprint().to_string());
    i
}
