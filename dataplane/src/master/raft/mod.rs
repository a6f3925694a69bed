//! Raft for the master (openraft): the type configuration, the RocksDB log
//! store, the network, and the replicated state as the state machine.
//!
//! The log and the metadata live in two RocksDB instances: log appends are
//! fsynced (an acknowledged write must survive a crash), metadata writes are
//! not (the log replays them), and separate write-ahead logs keep the
//! metadata's writes out of every log fsync.

pub mod log_store;
pub mod network;
pub mod state_machine;

use super::command::{Command, FsError, Reply};
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// What applying a command returned, carried back to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Result<Reply, FsError>);

openraft::declare_raft_types!(
    /// Weir master's Raft types.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// A snapshot travels as the encoded content of the metadata store.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::TypeConfig;
    use super::log_store::LogStore;
    use super::state_machine::{StateMachine, SyncFn};
    use crate::master::metastore::{MemoryStore, MetaStore, RocksStore};
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use std::sync::Arc;

    struct RocksBuilder {
        memory_metadata: bool,
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = LogStore::open(&dir.path().join("log")).expect("log store");
            let (store, sync): (Arc<dyn MetaStore>, SyncFn) = if self.memory_metadata {
                (Arc::new(MemoryStore::new()), Arc::new(|| Ok(())))
            } else {
                let rocks =
                    Arc::new(RocksStore::open(&dir.path().join("meta"), 1024).expect("meta store"));
                let for_sync = rocks.clone();
                (
                    rocks,
                    Arc::new(move || for_sync.sync().map_err(super::io_err)),
                )
            };
            let sm = StateMachine::new(store, dir.path().join("snapshots"), sync)
                .expect("state machine");
            Ok((dir, log, sm))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes_on_rocksdb() {
        Suite::test_all(RocksBuilder {
            memory_metadata: false,
        })
        .await
        .expect("storage suite");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes_with_in_memory_metadata() {
        Suite::test_all(RocksBuilder {
            memory_metadata: true,
        })
        .await
        .expect("storage suite");
    }
}
