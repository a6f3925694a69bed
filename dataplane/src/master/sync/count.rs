//! The background count of each mount's files and bytes: one directory
//! listed at a time, progress published as it goes; it never holds back a
//! read or the mount's use.

use super::MetadataSync;
use crate::master::metastore::MountInfo;
use crate::ufs::UfsPath;
use futures::TryStreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Progress of counting one mount's files and bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountCount {
    pub mount_id: u64,
    pub files: u64,
    pub bytes: u64,
    pub complete: bool,
    pub error: Option<String>,
}

impl MetadataSync {
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
