//! Metadata sync with the under-storage, outside Raft: the leader asks the
//! under-storage (a stat, or one directory's listing, streamed) and proposes
//! what it found as `LoadVersionedListing` entries, which every master applies the
//! same way. Nothing here holds a lock over a tree, and nothing blocks the
//! use of a mount: paths load lazily on first access, and the background
//! count of a mount's files and bytes only reports progress.

use super::command::{Command, FsError, UfsEntry};
use super::error::MasterResult;
use super::metastore::{Inode, InodeId, MountInfo, PersistState};
use super::namespace::Namespace;
use super::node::Proposer;
use crate::path::WeirPath;
use crate::ufs::{self, Ufs, UfsPath, UfsStatus};
use futures::TryStreamExt;
use lru::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weir_api::SyncPolicy;

/// Entries per proposed listing page.
const LOAD_CHUNK: usize = 1000;
/// Paths whose last check is remembered; older ones are checked again.
const CHECKED_ENTRIES: usize = 100_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn entry(s: UfsStatus) -> UfsEntry {
    UfsEntry {
        version: s.version,
        name: s.name,
        is_dir: s.is_dir,
        length: s.length,
        mtime_ms: s.mtime_ms,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        link: s.link,
    }
}

#[derive(Debug)]
pub struct MetadataSync {
    proposer: Proposer,
    namespace: Namespace,
    stores: Mutex<HashMap<u64, Arc<dyn Ufs>>>,
    /// One listing of a directory at a time; later callers wait for it.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counts: Mutex<HashMap<String, MountCount>>,
    /// When each file or directory was last checked against the
    /// under-storage. The leader's own memory: after a restart or a
    /// leader change every path is checked again on its first access.
    checked: Mutex<LruCache<InodeId, Instant>>,
    /// When this master started, in ms since the epoch.
    started_ms: u64,
    /// Checks of known paths against the under-storage, by outcome.
    checks: Family<CheckLabels, Counter>,
    turns: turns::Turns,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    /// `unchanged`, `changed` or `gone`.
    outcome: &'static str,
}

/// The under-storage path of `path` below `mount`.
fn ufs_path(mount: &MountInfo, path: &WeirPath) -> MasterResult<UfsPath> {
    let mp = WeirPath::parse(mount.path()).map_err(FsError::from)?;
    let rest = path.strip_prefix(&mp).unwrap_or_default();
    Ok(UfsPath::parse(rest)?)
}

/// Whether a listing loaded at `synced_ms` still stands under `policy`.
/// One loaded before `since` (this master's start) does not: what changed
/// while Weir was down shows up on first access, as for files.
fn fresh(synced_ms: Option<u64>, policy: SyncPolicy, now: u64, since: u64) -> bool {
    match synced_ms {
        None => false,
        Some(_) if policy == SyncPolicy::Never => true,
        Some(t) => t >= since && !policy.is_due(Duration::from_millis(now.saturating_sub(t))),
    }
}

mod count;
mod through;
mod turns;
mod validate;

pub use count::MountCount;
pub use through::NewEntry;

impl MetadataSync {
    pub fn new(proposer: Proposer, namespace: Namespace) -> Self {
        Self {
            proposer,
            namespace,
            stores: Mutex::default(),
            in_flight: Mutex::default(),
            counts: Mutex::default(),
            checked: Mutex::new(LruCache::new(
                NonZeroUsize::new(CHECKED_ENTRIES).expect("non-zero"),
            )),
            started_ms: now_ms(),
            checks: Family::default(),
            turns: turns::Turns::default(),
        }
    }

    pub fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "weir_master_ufs_checks",
            "Known paths checked against the under-storage on access (one stat each), by outcome",
            self.checks.clone(),
        );
    }

    fn count_check(&self, outcome: &'static str) {
        self.checks.get_or_create(&CheckLabels { outcome }).inc();
    }

    fn store(&self, mount: &MountInfo) -> MasterResult<Arc<dyn Ufs>> {
        if let Some(s) = self.stores.lock().expect("stores").get(&mount.mount_id) {
            return Ok(s.clone());
        }
        let store = ufs::open(
            &mount.spec.ufs_uri,
            &mount.spec.options,
            &mount.spec.credential_files,
        )?;
        self.stores
            .lock()
            .expect("stores")
            .insert(mount.mount_id, store.clone());
        Ok(store)
    }

    /// Makes `path` known to the namespace if the under-storage has it:
    /// missing components are stat'ed one by one and proposed, so a path
    /// deep in a huge directory resolves without listing that directory.
    /// Returns the inode, or `None` when neither side has the path.
    pub async fn resolve(&self, path: &WeirPath) -> MasterResult<Option<Inode>> {
        let ns = &self.namespace;
        if let Some(found) = ns.lookup(path)? {
            return Ok(Some(found));
        }
        let Some(mount) = ns.mount_of(path)? else {
            return Ok(None);
        };
        let (mut at, mut dir) = ns.deepest_existing(path)?;
        let store = self.store(&mount)?;
        let now = now_ms();
        let names: Vec<String> = path
            .components()
            .skip(at.components().count())
            .map(str::to_owned)
            .collect();
        tracing::debug!(%path, %at, ?names, synced = ?dir.synced_ms, mount = %mount.path(), "resolving from the under-storage");
        for name in names {
            if !dir.is_dir() {
                return Ok(None);
            }
            // A loaded, fresh listing is authoritative: the child is absent.
            if fresh(dir.synced_ms, mount.spec.sync, now, self.started_ms) {
                return Ok(None);
            }
            let next = at.child(&name).map_err(FsError::from)?;
            let Some(status) = store.stat(&ufs_path(&mount, &next)?).await? else {
                return Ok(None);
            };
            let status = UfsStatus {
                name: name.clone(),
                ..status
            };
            self.proposer
                .write(Command::LoadVersionedListing {
                    dir: at.to_string(),
                    entries: vec![entry(status)],
                    vanished: vec![],
                    complete: false,
                    now_ms: now,
                })
                .await?;
            let Some(inode) = ns.lookup(&next)? else {
                return Ok(None);
            };
            at = next;
            dir = inode;
        }
        Ok(Some(dir))
    }

    /// Loads (or re-validates, past the mount's sync interval) the listing
    /// of the directory at `path`, one streamed page at a time.
    pub async fn sync_dir(&self, path: &WeirPath) -> MasterResult<()> {
        self.sync_dir_with(path, false).await
    }

    /// Names of `dir`'s children that the under-storage has (persisted).
    fn persisted_children(&self, dir: &WeirPath) -> MasterResult<HashSet<String>> {
        let mut names = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.namespace.list(dir, cursor.as_deref(), LOAD_CHUNK)?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.name.clone());
            names.extend(
                page.into_iter()
                    .filter(|i| i.persist == PersistState::Persisted)
                    .map(|i| i.name),
            );
        }
        Ok(names)
    }

    /// [`Self::sync_dir`]; with `force`, lists the directory again even
    /// when its listing is fresh (a job's "load metadata first").
    pub async fn sync_dir_with(&self, path: &WeirPath, force: bool) -> MasterResult<()> {
        let ns = &self.namespace;
        let Some(mount) = ns.mount_of(path)? else {
            return Ok(());
        };
        let is_fresh = || -> MasterResult<bool> {
            Ok(match ns.lookup(path)? {
                Some(d) if d.is_dir() => {
                    fresh(d.synced_ms, mount.spec.sync, now_ms(), self.started_ms)
                }
                _ => true,
            })
        };
        if !force && is_fresh()? {
            return Ok(());
        }
        let gate = {
            let mut in_flight = self.in_flight.lock().expect("in flight");
            in_flight.entry(path.to_string()).or_default().clone()
        };
        let _turn = gate.lock().await;
        if !force && is_fresh()? {
            return Ok(());
        }
        let store = self.store(&mount)?;
        let dir_ufs = ufs_path(&mount, path)?;
        // What the namespace had from the under-storage before it was
        // listed: only those can have vanished from it. A file Weir
        // persists while the listing runs may be missing from the listing
        // without being gone.
        let persisted_before = self.persisted_children(path)?;
        let mut listing = store.list(&dir_ufs);
        let mut seen = HashSet::new();
        let mut chunk = Vec::with_capacity(LOAD_CHUNK);
        let now = now_ms();
        while let Some(status) = listing.try_next().await? {
            if UfsPath::parse(&status.name).is_err()
                || WeirPath::root().child(&status.name).is_err()
            {
                tracing::warn!(dir = %path, name = %status.name, "skipping an under-storage entry whose name Weir cannot hold");
                continue;
            }
            seen.insert(status.name.clone());
            chunk.push(entry(status));
            if chunk.len() == LOAD_CHUNK {
                let entries = std::mem::take(&mut chunk);
                self.proposer
                    .write(Command::LoadVersionedListing {
                        dir: path.to_string(),
                        entries,
                        vanished: vec![],
                        complete: false,
                        now_ms: now,
                    })
                    .await?;
            }
        }
        // Entries the namespace has from the under-storage that it no
        // longer lists are gone there; files written through Weir and not
        // yet persisted stay.
        let vanished: Vec<String> = persisted_before
            .into_iter()
            .filter(|name| !seen.contains(name))
            .collect();
        self.proposer
            .write(Command::LoadVersionedListing {
                dir: path.to_string(),
                entries: chunk,
                vanished,
                complete: true,
                now_ms: now,
            })
            .await?;
        self.in_flight
            .lock()
            .expect("in flight")
            .remove(path.as_str());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_sync_policy() {
        let every = |ms| SyncPolicy::Interval(Duration::from_millis(ms));
        assert!(!fresh(None, SyncPolicy::Never, 100, 0));
        assert!(
            fresh(Some(1), SyncPolicy::Never, 1_000_000, 500),
            "never: loaded once, restarts or not"
        );
        assert!(fresh(Some(100), every(50), 120, 0));
        assert!(!fresh(Some(100), every(50), 151, 0));
        assert!(!fresh(Some(100), SyncPolicy::Always, 300, 0));
        assert!(
            !fresh(Some(100), every(1_000_000), 120, 110),
            "loaded before this master started"
        );
    }
}
