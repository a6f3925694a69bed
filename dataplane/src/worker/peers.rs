//! Worker-to-worker block reads: a whole cached block asked of a peer
//! over the data path, for a job's replica or a persist of blocks this
//! worker lacks.

use super::{Worker, WorkerError, WorkerResult};
use crate::wire::{self, Peer, ReadRequest, Request, Response};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// Asks `peer` for a whole cached block; returns the connection positioned
/// at the block's first byte.
pub(super) async fn open_peer_block(
    peer: &Peer,
    block: u64,
    len: u64,
) -> WorkerResult<impl AsyncRead + Unpin> {
    let mut sock = tokio::net::TcpStream::connect((peer.host.as_str(), peer.port))
        .await
        .map_err(|e| WorkerError::Invalid(format!("connecting to peer {peer}: {e}")))?;
    let _ = sock.set_nodelay(true);
    let req = Request::Read(ReadRequest {
        block,
        offset: 0,
        len,
        source: None,
        cache: false,
    });
    wire::send(&mut sock, &req).await?;
    let mut rd = BufReader::with_capacity(1 << 20, sock);
    match wire::recv(&mut rd).await? {
        Some(Response::Data { len: n }) if n == len => Ok(rd.take(len)),
        Some(Response::Error { message, .. }) => Err(WorkerError::Invalid(format!(
            "peer {peer}: block {block}: {message}"
        ))),
        other => Err(WorkerError::Invalid(format!(
            "peer {peer}: block {block}: unexpected reply {other:?}"
        ))),
    }
}

/// Copies a block a peer holds into this worker's store.
pub(super) async fn copy_from_peer(
    worker: &Arc<Worker>,
    block: u64,
    offset: u64,
    len: u64,
    peer: &Peer,
) -> WorkerResult<()> {
    let mut rd = open_peer_block(peer, block, len).await?;
    // A broken copy drops the writer: no partial block is ever kept.
    let mut writer = worker.store.begin(block, offset, len, false)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    while copied < len {
        let n = rd.read(&mut buf).await.map_err(wire::WireError::Io)?;
        if n == 0 {
            return Err(WorkerError::Invalid(format!(
                "peer {peer}: block {block} ended after {copied} of {len} bytes"
            )));
        }
        writer.write(&buf[..n])?;
        copied += n as u64;
    }
    worker.metrics.peer_bytes_read.inc_by(len);
    let tier = writer.commit()?;
    worker.commit_block(block, len, tier).await;
    Ok(())
}
