//! The replicated state: the namespace and the job table over one metadata
//! store. Applying a command plans it in the part that owns it and writes
//! its changes, with the Raft bookkeeping, in one batch, so after a crash
//! the store is exactly "everything up to the applied entry".

use super::command::{Command, FsResult, Reply};
use super::jobs::table::JobTable;
use super::metastore::{MetaStore, Op};
use super::namespace::Namespace;
use std::sync::Arc;

#[derive(Clone)]
pub struct ReplicatedState {
    store: Arc<dyn MetaStore>,
    namespace: Namespace,
    jobs: JobTable,
}

impl std::fmt::Debug for ReplicatedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedState").finish_non_exhaustive()
    }
}

impl ReplicatedState {
    /// Wraps `store`, creating the root directory if the store is new.
    pub fn open(store: Arc<dyn MetaStore>) -> FsResult<Self> {
        Ok(Self {
            namespace: Namespace::open(store.clone())?,
            jobs: JobTable::new(store.clone()),
            store,
        })
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn jobs(&self) -> &JobTable {
        &self.jobs
    }

    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    /// Applies one command; `extra` ops (the Raft applied index) are
    /// written in the same batch whether the command succeeds or fails.
    pub fn apply(&self, cmd: &Command, extra: Vec<Op>) -> FsResult<Reply> {
        let planned = match cmd {
            Command::SubmitJob { .. } | Command::UpdateJob { .. } | Command::CancelJob { .. } => {
                self.jobs.plan(cmd).map(|(ops, reply)| (ops, reply, false))
            }
            _ => self
                .namespace
                .plan(cmd)
                .map(|p| (p.ops, p.reply, p.mounts_changed)),
        };
        match planned {
            Ok((mut ops, reply, mounts_changed)) => {
                ops.extend(extra);
                self.store.write(ops)?;
                if mounts_changed {
                    self.namespace.reload();
                }
                Ok(reply)
            }
            Err(e) => {
                if !extra.is_empty() {
                    self.store.write(extra)?;
                }
                Err(e)
            }
        }
    }

    /// Drops cached state after the store was replaced underneath (a
    /// snapshot install).
    pub fn reload(&self) {
        self.namespace.reload();
    }
}
