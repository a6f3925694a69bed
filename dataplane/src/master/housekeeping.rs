//! The master's periodic chores, every half second: on the leader, seed a
//! new cluster's ids, expire silent workers, start counting new mounts,
//! and tell workers which blocks to drop (deleted files) or keep (pinned
//! files); on every master, export the Raft and namespace gauges.

use super::command::Command;
use super::namespace::random_id_seed;
use super::parts::Parts;
use crate::block;
use crate::metrics::MasterGauges;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs the chores until `stop` changes.
pub async fn housekeeping(
    parts: Parts,
    gauges: Arc<MasterGauges>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks = 0u64;
    loop {
        ticks += 1;
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if parts.proposer.is_leader() {
            if parts.namespace.ids_seeded() == Ok(false)
                && let Err(e) = parts
                    .proposer
                    .write(Command::SeedInodeIds {
                        start: random_id_seed(),
                    })
                    .await
            {
                tracing::warn!(error = %e, "seeding inode ids");
            }
            parts.workers.expire();
            if let Ok(mounts) = parts.namespace.mounts() {
                parts.sync.start_counts(mounts);
            }
            if ticks.is_multiple_of(4) {
                sweep_blocks(&parts);
            }
        }
        let m = parts.proposer.metrics();
        gauges.term.set(m.current_term as i64);
        gauges
            .commit_index
            .set(m.local_committed.map(|c| c.index() as i64).unwrap_or(0));
        gauges
            .last_applied
            .set(m.last_applied.map(|c| c.index() as i64).unwrap_or(0));
        gauges
            .is_leader
            .set(i64::from(m.state == openraft::ServerState::Leader));
        gauges
            .inodes
            .set(parts.namespace.inode_count().unwrap_or(0) as i64);
        gauges.workers.set(parts.workers.workers().len() as i64);
    }
}

/// Blocks of deleted files (or of a file's old, longer content) are still
/// on workers: tell their holders to drop them. Blocks of pinned files:
/// tell their holders to keep them.
fn sweep_blocks(parts: &Parts) {
    let store = parts.namespace.store();
    let mut orphans = Vec::new();
    let mut pinned = std::collections::BTreeSet::new();
    for block in parts.workers.cached_blocks() {
        match store.inode(block::file_of(block)) {
            Ok(Some(inode)) => {
                let index = block::index_of(block);
                if inode.is_dir() || (inode.completed && index * inode.block_size >= inode.length) {
                    orphans.push(block);
                } else if inode.pinned {
                    pinned.insert(block);
                }
            }
            Ok(None) => orphans.push(block),
            Err(_) => {}
        }
    }
    parts.workers.set_pinned_blocks(&pinned);
    if !orphans.is_empty() {
        let copies = parts.workers.schedule_free(orphans);
        tracing::debug!(copies, "freeing blocks of deleted files");
    }
}
