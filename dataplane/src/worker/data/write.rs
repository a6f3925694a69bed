//! Files written on the data path: cut into blocks for the cache and/or
//! streamed to the under-storage, as the write type says, and committed
//! (or given back) as a whole.

use super::{CHUNK, reply_err};
use crate::block::block_id;
use crate::ufs::{UfsPath, UfsWriter};
use crate::wire::{self, Response, WriteRequest};
use crate::worker::persist::PersistTask;
use crate::worker::store::BlockWriter;
use crate::worker::{Worker, WorkerError, WorkerResult};
use bytes::Bytes;
use std::sync::Arc;
use tokio::io::BufReader;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;
use weir_api::WriteType;

/// A file arriving on a data connection: cut into blocks for the cache
/// and/or streamed to the under-storage, as the write type says.
struct FileSink<'a> {
    worker: &'a Arc<Worker>,
    req: &'a WriteRequest,
    ufs: Option<Box<dyn UfsWriter>>,
    current: Option<BlockWriter>,
    index: u64,
    length: u64,
    committed: Vec<(u64, String, u64)>,
}

impl FileSink<'_> {
    async fn push(&mut self, data: &[u8]) -> WorkerResult<()> {
        if let Some(u) = self.ufs.as_mut() {
            u.write(Bytes::copy_from_slice(data)).await?;
            self.worker
                .metrics
                .ufs_bytes_written
                .inc_by(data.len() as u64);
        }
        self.length += data.len() as u64;
        if !self.req.mode.caches() {
            return Ok(());
        }
        let size = self.req.block_size;
        let mut rest = data;
        while !rest.is_empty() {
            if self.current.is_none() {
                self.current = Some(self.worker.store.begin_growable(
                    block_id(self.req.file_id, self.index),
                    self.index * size,
                    rest.len() as u64,
                    size,
                    self.req.mode == WriteType::AsyncThrough,
                )?);
            }
            let w = self.current.as_mut().expect("just set");
            let n = ((size - w.written()) as usize).min(rest.len());
            w.write(&rest[..n])?;
            rest = &rest[n..];
            if w.written() == size {
                self.seal()?;
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> WorkerResult<()> {
        if let Some(w) = self.current.take() {
            let len = w.written();
            let tier = w.commit()?;
            self.committed
                .push((block_id(self.req.file_id, self.index), tier, len));
            self.index += 1;
        }
        Ok(())
    }

    async fn finish(&mut self) -> WorkerResult<()> {
        self.seal()?;
        if let Some(u) = self.ufs.as_mut() {
            u.close().await?;
        }
        Ok(())
    }

    async fn abort(&mut self) {
        self.current = None;
        if let Some(u) = self.ufs.as_mut() {
            let _ = u.abort().await;
        }
        for (block, _, _) in self.committed.drain(..) {
            self.worker.store.remove(block);
        }
    }
}

pub(super) async fn write(
    worker: &Arc<Worker>,
    req: WriteRequest,
    rd: &mut BufReader<OwnedReadHalf>,
    out: &mut OwnedWriteHalf,
) -> WorkerResult<()> {
    let opened = async {
        if req.block_size == 0 {
            return Err(WorkerError::Invalid("block size 0".into()));
        }
        if !req.mode.writes_through() && req.mode != WriteType::AsyncThrough {
            return Ok(None);
        }
        let (mount, path) = req.ufs.as_ref().ok_or_else(|| {
            WorkerError::Invalid(format!(
                "{:?} needs an under-storage: {} is not under a mount",
                req.mode, req.path
            ))
        })?;
        let ufs = worker.mounts.get(*mount).await?;
        let path = UfsPath::parse(path)?;
        if req.mode.writes_through() {
            Ok(Some(ufs.writer(&path).await?))
        } else {
            Ok(None)
        }
    };
    let (ufs, mut failed) = match opened.await {
        Ok(u) => (u, None),
        Err(e) => (None, Some(e)),
    };
    let mut sink = FileSink {
        worker,
        req: &req,
        ufs,
        current: None,
        index: 0,
        length: 0,
        committed: Vec::new(),
    };
    let mut buf = Vec::with_capacity(CHUNK);
    // Frames are read to the end even after a failure, so the connection
    // stays in step and the client gets the reason.
    loop {
        match wire::recv_frame(rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // The client went away mid-file: nothing of it stays.
                sink.abort().await;
                return Err(e.into());
            }
        }
        if failed.is_none()
            && let Err(e) = sink.push(&buf).await
        {
            failed = Some(e);
        }
    }
    if failed.is_none()
        && let Err(e) = sink.finish().await
    {
        failed = Some(e);
    }
    if let Some(e) = failed {
        sink.abort().await;
        tracing::warn!(file = req.file_id, error = %e, "write failed");
        return reply_err(out, &e).await;
    }
    for (block, tier, len) in &sink.committed {
        worker.commit_block(*block, *len, tier.clone()).await;
    }
    if req.mode == WriteType::AsyncThrough
        && let Some((mount_id, ufs_path)) = &req.ufs
    {
        let task = PersistTask {
            seq: 0,
            file_id: req.file_id,
            path: req.path.clone(),
            mount_id: *mount_id,
            ufs_path: ufs_path.clone(),
            blocks: sink.committed.iter().map(|(b, _, _)| *b).collect(),
            length: sink.length,
            peers: Vec::new(),
        };
        if let Err(e) = worker.persister.enqueue(task) {
            let blocks: Vec<u64> = sink.committed.iter().map(|(b, _, _)| *b).collect();
            for b in blocks {
                let _ = worker.store.set_persisted(b);
                worker.store.remove(b);
            }
            return reply_err(out, &e).await;
        }
    }
    let blocks = sink
        .committed
        .iter()
        .map(|(b, t, _)| (*b, t.clone()))
        .collect();
    wire::send(out, &Response::Written { blocks }).await?;
    Ok(())
}
