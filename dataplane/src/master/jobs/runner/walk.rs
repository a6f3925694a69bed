//! A job's target walked into files: plain paths and globs, directories
//! listed (and loaded from the under-storage) one at a time, in a fixed
//! order so a new leader's walk lines up with the checkpoint.

use super::{JobRunner, Stop};
use crate::master::jobs::glob::{glob_base, glob_matches, is_glob};
use crate::master::records::{Inode, JobSpec};
use crate::path::WeirPath;

/// One file of a job's walk.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub path: WeirPath,
    pub inode: Inode,
}

impl JobRunner {
    /// Every file the job's paths name, in a fixed walk order.
    pub(super) async fn walk(&self, spec: &JobSpec) -> Result<Vec<Target>, Stop> {
        let mut out = Vec::new();
        for raw in &spec.paths {
            let (base, pattern) = if is_glob(raw) {
                (glob_base(raw), Some(raw.as_str()))
            } else {
                (raw.clone(), None)
            };
            let base =
                WeirPath::parse(&base).map_err(|e| Stop::Fail(format!("path {raw}: {e}")))?;
            let root = self
                .sync
                .resolve(&base)
                .await
                .map_err(|e| Stop::Fail(format!("path {raw}: {e}")))?;
            let Some(root) = root else {
                return Err(Stop::Fail(format!("path not found: {raw}")));
            };
            let before = out.len();
            let mut dirs = vec![(base.clone(), root)];
            while let Some((path, inode)) = dirs.pop() {
                if !inode.is_dir() {
                    if pattern.is_none_or(|p| glob_matches(p, path.as_str())) {
                        out.push(Target { path, inode });
                    }
                    continue;
                }
                self.sync
                    .sync_dir_with(&path, spec.load_metadata)
                    .await
                    .map_err(|e| Stop::Fail(format!("listing {path}: {e}")))?;
                let mut cursor: Option<String> = None;
                let mut subdirs = Vec::new();
                loop {
                    let page = self.namespace.list(&path, cursor.as_deref(), 1000)?;
                    let Some(last) = page.last() else { break };
                    cursor = Some(last.name.clone());
                    for child in page {
                        let Ok(child_path) = path.child(&child.name) else {
                            continue;
                        };
                        if child.is_dir() {
                            subdirs.push((child_path, child));
                        } else if pattern.is_none_or(|p| glob_matches(p, child_path.as_str())) {
                            out.push(Target {
                                path: child_path,
                                inode: child,
                            });
                        }
                    }
                }
                dirs.extend(subdirs.into_iter().rev());
            }
            if let Some(p) = pattern
                && out.len() == before
            {
                return Err(Stop::Fail(format!("no file matches {p}")));
            }
        }
        Ok(out)
    }
}
