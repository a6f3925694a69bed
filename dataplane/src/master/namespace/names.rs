//! Hard links: one inode under several names. Every name is an edge to
//! the inode's id; the inode record keeps one of them as its own
//! (`parent`, `name`: the path [`Namespace::path_of`] gives), and the
//! others are listed under the meta key `names/<id>`, so that removing a
//! name knows whether it was the last, and the record's own name, when
//! removed or moved, is handed on. One inode means one set of cached
//! blocks and one set of attributes, whichever name is used.

use super::Namespace;
use super::change::Change;
use crate::master::command::{FsError, FsResult, Reply};
use crate::master::metastore::{Inode, InodeId, MetaStore, Op, decode, encode};

/// Names of an inode beyond its record's own: (directory, name).
pub(super) type OtherNames = Vec<(InodeId, String)>;

fn key(id: InodeId) -> String {
    format!("names/{id}")
}

fn stored(store: &dyn MetaStore, id: InodeId) -> FsResult<OtherNames> {
    match store.meta(&key(id))? {
        Some(bytes) => Ok(decode("names", &bytes)?),
        None => Ok(Vec::new()),
    }
}

impl Change<'_> {
    pub(super) fn other_names(&self, id: InodeId) -> FsResult<OtherNames> {
        match self.pending_names.get(&id) {
            Some(names) => Ok(names.clone()),
            None => stored(self.store, id),
        }
    }

    fn set_other_names(&mut self, id: InodeId, names: OtherNames) -> FsResult<()> {
        self.ops.push(if names.is_empty() {
            Op::DeleteMeta(key(id))
        } else {
            Op::PutMeta(key(id), encode(&names)?)
        });
        self.pending_names.insert(id, names);
        Ok(())
    }

    /// Removes the entry `name` of `parent`, a name of `id`; returns
    /// whether it was the inode's last, so the inode went with it.
    pub(super) fn remove_name(
        &mut self,
        parent: InodeId,
        name: &str,
        id: InodeId,
    ) -> FsResult<bool> {
        self.unlink(parent, name);
        let mut names = self.other_names(id)?;
        if let Some(at) = names.iter().position(|(p, n)| *p == parent && n == name) {
            names.remove(at);
            self.set_other_names(id, names)?;
            return Ok(false);
        }
        if names.is_empty() {
            self.delete_inode(id);
            return Ok(true);
        }
        // The record's own name went: another one becomes it.
        let (parent, name) = names.remove(0);
        if let Some(mut inode) = self.inode(id)? {
            inode.parent = parent;
            inode.name = name;
            self.put(inode);
        }
        self.set_other_names(id, names)?;
        Ok(false)
    }

    /// Moves the entry `from` (directory, name) of `inode` to `to`; the
    /// inode as it is afterwards (its record's own name follows when that
    /// is the one moved).
    pub(super) fn move_name(
        &mut self,
        from: (InodeId, &str),
        to: (InodeId, &str),
        mut inode: Inode,
    ) -> FsResult<Inode> {
        self.unlink(from.0, from.1);
        self.link(to.0, to.1, inode.id);
        let mut names = self.other_names(inode.id)?;
        match names.iter().position(|(p, n)| *p == from.0 && n == from.1) {
            Some(at) => {
                names[at] = (to.0, to.1.to_owned());
                self.set_other_names(inode.id, names)?;
            }
            None => {
                inode.parent = to.0;
                inode.name = to.1.to_owned();
            }
        }
        Ok(inode)
    }
}

impl Namespace {
    /// How many names `inode` has: 1 but for a file with hard links.
    pub fn link_count(&self, inode: &Inode) -> FsResult<u32> {
        if inode.is_dir() {
            return Ok(1);
        }
        Ok(1 + stored(self.store.as_ref(), inode.id)?.len() as u32)
    }

    /// `ln src dst`: `dst` becomes another name of the file at `src`, in
    /// the same mount.
    pub(super) fn plan_link(&self, c: &mut Change<'_>, src: &str, dst: &str) -> FsResult<Reply> {
        let (src, dst) = (Self::parse(src)?, Self::parse(dst)?);
        self.writable(&dst)?;
        let file = self.get(&src)?;
        if file.is_dir() {
            return Err(FsError::FailedPrecondition(format!(
                "{src} is a directory; directories have one name (hard links are for files)"
            )));
        }
        self.one_mount(&src, &dst)?;
        let (dir, name) = self.free_name(&dst)?;
        c.link(dir.id, name, file.id);
        let mut names = c.other_names(file.id)?;
        names.push((dir.id, name.to_owned()));
        c.set_other_names(file.id, names)?;
        Ok(Reply::Inode(Box::new(file)))
    }
}
