//! Listings of the under-storage loaded into the namespace: entries
//! created, files whose version changed replaced under new inode ids (so
//! blocks cached for old content are never served for new), and entries
//! the under-storage no longer has removed.

use super::Namespace;
use super::change::{Change, follow_attributes, ufs_inode};
use crate::master::command::{FsError, FsResult, Reply, UfsEntry};
use crate::master::metastore::PersistState;
use crate::path::WeirPath;
use crate::ufs::Fingerprint;

impl Namespace {
    pub(super) fn plan_load_listing(
        &self,
        c: &mut Change<'_>,
        dir: &str,
        entries: &[UfsEntry],
        vanished: &[String],
        complete: bool,
        now_ms: u64,
    ) -> FsResult<Reply> {
        let dir_path = Self::parse(dir)?;
        let Some(mut dir_inode) = self.lookup(&dir_path)? else {
            // The directory went (deleted or unmounted) while it was
            // being listed: nothing to load into.
            return Ok(Reply::Loaded {
                created: 0,
                updated: 0,
                removed: 0,
            });
        };
        if !dir_inode.is_dir() {
            return Err(FsError::FailedPrecondition(format!("{dir_path} is a file")));
        }
        let (mut created, mut updated, mut removed) = (0, 0, 0);
        for e in entries {
            WeirPath::root().child(&e.name)?;
            let kind = e.kind();
            match c.child(dir_inode.id, &e.name)? {
                None => {
                    c.create(ufs_inode(&dir_inode, e));
                    created += 1;
                }
                Some(id) => {
                    let Some(existing) = c.inode(id)? else {
                        continue;
                    };
                    if existing.kind != kind {
                        removed += c.remove_tree(dir_inode.id, &e.name, &existing)?;
                        c.create(ufs_inode(&dir_inode, e));
                        created += 1;
                    } else if existing.persist != PersistState::Persisted {
                        // Weir's own, not yet in the under-storage.
                    } else if e.is_dir {
                        let mut i = existing.clone();
                        if follow_attributes(&mut i, e) {
                            c.put(i);
                        }
                    } else {
                        let now = e.fingerprint();
                        let recorded = existing
                            .ufs_fingerprint
                            .as_deref()
                            .and_then(Fingerprint::parse);
                        match recorded {
                            Some(old) if old.same_content(&now) => {
                                // An earlier release recorded no version, or
                                // only attributes changed (chmod, chown,
                                // touch through Weir): same inode, same
                                // cached blocks.
                                let mut i = existing.clone();
                                let changed = follow_attributes(&mut i, e);
                                if old != now || changed {
                                    i.ufs_fingerprint = Some(now.to_string());
                                    c.put(i);
                                }
                            }
                            _ => {
                                // Changed in the under-storage: a new inode
                                // id, so blocks cached for the old content
                                // are never served for the new.
                                c.remove_tree(dir_inode.id, &e.name, &existing)?;
                                // A name of a file with several: this name
                                // alone gets the new content.
                                let mut i = existing.clone();
                                i.parent = dir_inode.id;
                                i.name = e.name.clone();
                                i.length = e.length;
                                follow_attributes(&mut i, e);
                                i.ufs_fingerprint = Some(now.to_string());
                                c.create(i);
                                updated += 1;
                            }
                        }
                    }
                }
            }
        }
        for name in vanished {
            if let Some(id) = c.child(dir_inode.id, name)?
                && let Some(existing) = c.inode(id)?
                && existing.persist == PersistState::Persisted
            {
                removed += c.remove_tree(dir_inode.id, name, &existing)?;
            }
        }
        if complete {
            dir_inode.synced_ms = Some(now_ms);
            c.put(dir_inode);
        }
        Ok(Reply::Loaded {
            created,
            updated,
            removed,
        })
    }

    /// Records the version Weir itself left a file at (after a rename or a
    /// write through), keeping its inode id: the under-storage has it.
    pub(super) fn plan_set_version(
        &self,
        c: &mut Change<'_>,
        path: &str,
        fingerprint: &str,
    ) -> FsResult<Reply> {
        let path = Self::parse(path)?;
        let mut inode = self.get(&path)?;
        if inode.is_dir() {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is a directory"
            )));
        }
        inode.ufs_fingerprint = Some(fingerprint.to_owned());
        inode.persist = PersistState::Persisted;
        c.put(inode.clone());
        Ok(Reply::Inode(Box::new(inode)))
    }
}
