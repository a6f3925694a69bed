//! A job's tasks on this worker: a block loaded (copied from a peer that
//! holds it, else read from the under-storage) and a file persisted (in
//! turn with the ASYNC_THROUGH files the persister writes).

use super::read::{BlockSource, fetch_block};
use crate::ufs::Fingerprint;
use crate::wire::{LoadRequest, PersistRequest, Response};
use crate::worker::peers::copy_from_peer;
use crate::worker::persist::PersistTask;
use crate::worker::store::StoreError;
use crate::worker::{Worker, WorkerError, WorkerResult};
use std::sync::Arc;

/// A job's block task. The work is not tied to the connection: a master
/// that fails over mid-task finds the block cached when it asks again.
pub(super) async fn load(
    worker: &Arc<Worker>,
    r: LoadRequest,
    pin: Option<Fingerprint>,
) -> WorkerResult<Response> {
    if let Some(tier) = worker.store.tier_of(r.block) {
        return Ok(Response::Loaded {
            tier,
            fetched: false,
        });
    }
    let mut peer_error = None;
    if let Some(peer) = &r.from
        && let Err(e) = copy_from_peer(worker, r.block, r.offset, r.len, peer).await
    {
        tracing::warn!(block = r.block, %peer, error = %e, "copying from a peer failed");
        peer_error = Some(e);
    }
    if !worker.store.contains(r.block) {
        match (&r.source, peer_error) {
            (Some(src), _) => {
                let src = BlockSource {
                    ufs: src.clone(),
                    pin,
                };
                fetch_block(worker, r.block, &src, None).await?
            }
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(WorkerError::Invalid(format!(
                    "block {}: no peer and no under-storage source to load it from",
                    r.block
                )));
            }
        }
    }
    match worker.store.tier_of(r.block) {
        Some(tier) => Ok(Response::Loaded {
            tier,
            fetched: true,
        }),
        None => Err(WorkerError::Store(StoreError::NoSpace { needed: r.len })),
    }
}

/// A job's persist task, run by the persister in turn with ASYNC_THROUGH
/// files (joining the queued entry when the file is already there).
pub(super) async fn persist_for_job(worker: &Arc<Worker>, r: PersistRequest) -> WorkerResult<()> {
    for (block, _, _) in &r.blocks {
        // Local blocks stay until the file is in the under-storage.
        let _ = worker.store.mark_unpersisted(*block);
    }
    let task = PersistTask {
        seq: 0,
        file_id: r.file_id,
        path: r.path,
        mount_id: r.mount_id,
        ufs_path: r.ufs_path,
        blocks: r.blocks.iter().map(|(b, _, _)| *b).collect(),
        length: r.length,
        peers: r.blocks.into_iter().map(|(_, len, p)| (len, p)).collect(),
    };
    let seq = worker.persister.enqueue_or_join(task)?;
    worker.persister.wait_done(seq).await;
    Ok(())
}
