//! Known paths checked against the under-storage on access, as the
//! mount's sync policy says: `Never` trusts what was loaded, `Interval`
//! checks a path once its last check is older than the interval, `Always`
//! on every lookup and open. A file whose version changed is replaced in
//! the namespace (a new inode id, so no block of the old version can
//! answer for it); one that is gone is removed.

use super::{MetadataSync, entry, now_ms, ufs_path};
use crate::master::command::{Command, FsError};
use crate::master::error::MasterResult;
use crate::master::metastore::{Inode, PersistState};
use crate::path::WeirPath;
use crate::ufs::{Fingerprint, UfsStatus};
use std::time::Instant;

impl MetadataSync {
    /// After Weir changed what `path`'s directory holds in the
    /// under-storage: the directory's times moved there, so its next
    /// access checks it again (one stat, and only if it is looked at).
    pub(super) fn parent_changed(&self, path: &WeirPath) {
        if let Some(dir) = path.parent()
            && let Ok(Some(d)) = self.namespace.lookup(&dir)
        {
            self.checked.lock().expect("checked").pop(&d.id);
        }
    }

    /// `inode`, found at `path`, as the under-storage has it now: the same
    /// inode, its replacement, or `None` when the under-storage no longer
    /// has it.
    pub async fn validate(&self, path: &WeirPath, inode: Inode) -> MasterResult<Option<Inode>> {
        // Only what came from (or reached) the under-storage is checked.
        if inode.persist != PersistState::Persisted || path.is_root() {
            return Ok(Some(inode));
        }
        let Some(mount) = self.namespace.mount_of(path)? else {
            return Ok(Some(inode));
        };
        if mount.path() == path.as_str() {
            return Ok(Some(inode));
        }
        let last = self
            .checked
            .lock()
            .expect("checked")
            .get(&inode.id)
            .copied();
        let age = last.map_or(std::time::Duration::MAX, |t| t.elapsed());
        if !mount.spec.sync.is_due(age) {
            return Ok(Some(inode));
        }
        let store = self.store(&mount)?;
        let started = Instant::now();
        let now = store.stat(&ufs_path(&mount, path)?).await?;
        let name = path.name().unwrap_or_default().to_owned();
        let dir = path
            .parent()
            .ok_or_else(|| FsError::InvalidArgument("the root".into()))?;
        let unchanged = match &now {
            None => false,
            Some(s) if s.is_dir != inode.is_dir() => false,
            // A directory changes only in its attributes (its entries are
            // the listing's): mode, owner, and its mtime where the store
            // keeps real directories.
            Some(s) if inode.is_dir() => {
                let mut followed = inode.clone();
                !crate::master::namespace::follow_attributes(&mut followed, &entry(s.clone()))
            }
            Some(s) => inode
                .ufs_fingerprint
                .as_deref()
                .and_then(Fingerprint::parse)
                .is_some_and(|recorded| recorded.same_content(&s.fingerprint())),
        };
        if unchanged {
            self.count_check("unchanged");
            self.checked.lock().expect("checked").put(inode.id, started);
            return Ok(Some(inode));
        }
        self.count_check(if now.is_none() { "gone" } else { "changed" });
        tracing::info!(%path, gone = now.is_none(), "changed in the under-storage; the namespace follows");
        let (entries, vanished) = match now {
            Some(s) => (
                vec![entry(UfsStatus {
                    name: name.clone(),
                    ..s
                })],
                vec![],
            ),
            None => (vec![], vec![name]),
        };
        self.proposer
            .write(Command::LoadVersionedListing {
                dir: dir.to_string(),
                entries,
                vanished,
                complete: false,
                now_ms: now_ms(),
            })
            .await?;
        let found = self.namespace.lookup(path)?;
        if let Some(fresh) = &found {
            self.checked.lock().expect("checked").put(fresh.id, started);
        }
        Ok(found)
    }
}
