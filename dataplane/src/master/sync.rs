//! Metadata sync with the under-storage, outside Raft: the leader asks the
//! under-storage (a stat, or one directory's listing, streamed) and proposes
//! what it found as `LoadListing` entries, which every master applies the
//! same way. Nothing here holds a lock over a tree, and nothing blocks the
//! use of a mount: paths load lazily on first access, and the background
//! count of a mount's files and bytes only reports progress.

use super::command::{Command, FsError, UfsEntry};
use super::error::MasterResult;
use super::metastore::{Inode, MountInfo, PersistState};
use super::namespace::Namespace;
use super::node::Proposer;
use crate::path::WeirPath;
use crate::ufs::{self, Ufs, UfsPath, UfsStatus};
use futures::TryStreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Entries per proposed listing page.
const LOAD_CHUNK: usize = 1000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn entry(s: UfsStatus) -> UfsEntry {
    UfsEntry {
        name: s.name,
        is_dir: s.is_dir,
        length: s.length,
        mtime_ms: s.mtime_ms,
    }
}

/// Progress of counting one mount's files and bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountCount {
    pub mount_id: u64,
    pub files: u64,
    pub bytes: u64,
    pub complete: bool,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct MetadataSync {
    proposer: Proposer,
    namespace: Namespace,
    stores: Mutex<HashMap<u64, Arc<dyn Ufs>>>,
    /// One listing of a directory at a time; later callers wait for it.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counts: Mutex<HashMap<String, MountCount>>,
}

/// The under-storage path of `path` below `mount`.
fn ufs_path(mount: &MountInfo, path: &WeirPath) -> MasterResult<UfsPath> {
    let mp = WeirPath::parse(mount.path()).map_err(FsError::from)?;
    let rest = path.strip_prefix(&mp).unwrap_or_default();
    Ok(UfsPath::parse(rest)?)
}

fn fresh(synced_ms: Option<u64>, interval_ms: u64, now: u64) -> bool {
    match synced_ms {
        None => false,
        Some(_) if interval_ms == 0 => true,
        Some(t) => now.saturating_sub(t) < interval_ms,
    }
}

impl MetadataSync {
    pub fn new(proposer: Proposer, namespace: Namespace) -> Self {
        Self {
            proposer,
            namespace,
            stores: Mutex::default(),
            in_flight: Mutex::default(),
            counts: Mutex::default(),
        }
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
            if fresh(dir.synced_ms, mount.spec.sync_interval_ms, now) {
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
                .write(Command::LoadListing {
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

    /// [`Self::sync_dir`]; with `force`, lists the directory again even
    /// when its listing is fresh (a job's "load metadata first").
    pub async fn sync_dir_with(&self, path: &WeirPath, force: bool) -> MasterResult<()> {
        let ns = &self.namespace;
        let Some(mount) = ns.mount_of(path)? else {
            return Ok(());
        };
        let is_fresh = || -> MasterResult<bool> {
            Ok(match ns.lookup(path)? {
                Some(d) if d.is_dir() => fresh(d.synced_ms, mount.spec.sync_interval_ms, now_ms()),
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
                    .write(Command::LoadListing {
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
        let mut vanished = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = ns.list(path, cursor.as_deref(), LOAD_CHUNK)?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.name.clone());
            vanished.extend(
                page.into_iter()
                    .filter(|i| i.persist == PersistState::Persisted && !seen.contains(&i.name))
                    .map(|i| i.name),
            );
        }
        self.proposer
            .write(Command::LoadListing {
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

    /// Counts of every mount known so far.
    pub fn counts(&self) -> HashMap<String, MountCount> {
        self.counts.lock().expect("counts").clone()
    }

    /// Starts counting the files and bytes of mounts that have no count yet
    /// (or were re-mounted). The walk lists one directory at a time and
    /// publishes progress as it goes.
    pub fn start_counts(self: &Arc<Self>, mounts: Vec<MountInfo>) {
        let mut counts = self.counts.lock().expect("counts");
        let live: HashSet<String> = mounts.iter().map(|m| m.path().to_owned()).collect();
        counts.retain(|path, _| live.contains(path));
        for mount in mounts {
            if counts
                .get(mount.path())
                .is_some_and(|c| c.mount_id == mount.mount_id)
            {
                continue;
            }
            counts.insert(
                mount.path().to_owned(),
                MountCount {
                    mount_id: mount.mount_id,
                    ..Default::default()
                },
            );
            let this = self.clone();
            tokio::spawn(async move { this.count(mount).await });
        }
    }

    async fn count(&self, mount: MountInfo) {
        let update = |f: &dyn Fn(&mut MountCount)| {
            if let Some(c) = self.counts.lock().expect("counts").get_mut(mount.path())
                && c.mount_id == mount.mount_id
            {
                f(c);
            }
        };
        let store = match self.store(&mount) {
            Ok(s) => s,
            Err(e) => return update(&|c| c.error = Some(e.to_string())),
        };
        let mut queue = vec![UfsPath::root()];
        while let Some(dir) = queue.pop() {
            let mut listing = store.list(&dir);
            let (mut files, mut bytes) = (0u64, 0u64);
            loop {
                match listing.try_next().await {
                    Ok(Some(s)) if s.is_dir => match dir.join(&s.name) {
                        Ok(sub) => queue.push(sub),
                        Err(_) => continue,
                    },
                    Ok(Some(s)) => {
                        files += 1;
                        bytes += s.length;
                        if files.is_multiple_of(10_000) {
                            let (f, b) = (files, bytes);
                            update(&|c| {
                                c.files += f;
                                c.bytes += b;
                            });
                            (files, bytes) = (0, 0);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let msg = e.to_string();
                        update(&|c| c.error = Some(msg.clone()));
                        break;
                    }
                }
            }
            update(&|c| {
                c.files += files;
                c.bytes += bytes;
            });
        }
        update(&|c| c.complete = true);
        tracing::info!(mount = %mount.path(), "under-storage count complete");
    }
}

#[cfg(test)]
mod tests {
    use super::fresh;

    #[test]
    fn freshness_follows_the_sync_interval() {
        assert!(!fresh(None, 0, 100));
        assert!(fresh(Some(1), 0, 1_000_000), "interval 0 loads once");
        assert!(fresh(Some(100), 50, 120));
        assert!(!fresh(Some(100), 50, 151));
    }
}
