//! Short-circuit reads: the one place where a file's bytes are taken
//! straight from the data file of a worker on this machine, under a read
//! lease, instead of over the data path. Three readers use it: the
//! client's own reads, FUSE reads answered from any FUSE thread, and FUSE
//! passthrough, where the kernel is handed the worker's file of a whole
//! cached file and reads it itself.

use super::fs::FileSystem;
use super::leases::LeaseGuard;
use super::workers::data_addr;
use crate::proto::master as pb;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// Local blocks one open file keeps leased at most: a long sequential
/// read holds the blocks around the reader, not every block it passed.
const LEASES_PER_FILE: usize = 16;

/// A block of a local worker (`len` bytes of `file` from `offset`),
/// leased until this is dropped.
#[derive(Debug)]
pub struct LocalBlock {
    pub block: u64,
    file: std::fs::File,
    offset: u64,
    pub len: u64,
    _lease: LeaseGuard,
}

impl LocalBlock {
    // Plain reads: mapping tmpfs block files measured several times slower
    // here (page faults) than copying them with pread.
    /// Reads from `off` within the block.
    pub fn read_exact_at(&self, out: &mut [u8], off: u64) -> std::io::Result<()> {
        self.file.read_exact_at(out, self.offset + off)
    }
}

/// A whole file as a local worker keeps it, every block leased until this
/// is dropped: what FUSE hands the kernel as a passthrough file.
#[derive(Debug)]
pub struct LocalFile {
    pub file: std::fs::File,
    _lease: LeaseGuard,
}

impl FileSystem {
    /// The holder of `block` on this node, unless it failed lately.
    fn local_holder(&self, block: &pb::BlockInfo) -> Option<String> {
        block
            .locations
            .iter()
            .filter_map(|l| l.worker.as_ref())
            .filter(|w| self.same_node(w))
            .map(data_addr)
            .find(|addr| !self.workers().failed_recently(addr))
    }

    /// Takes a read lease on a block of a local worker and opens its file.
    pub async fn lease_local(&self, block: &pb::BlockInfo) -> Option<LocalBlock> {
        if !self.config().short_circuit {
            return None;
        }
        let addr = self.local_holder(block)?;
        let (leased, lease) = self
            .leases()
            .take(self.workers(), &addr, block.block_id)
            .await?;
        if leased.len != block.length {
            return None;
        }
        let file = std::fs::File::open(&leased.path).ok()?;
        Some(LocalBlock {
            block: block.block_id,
            offset: leased.offset,
            len: leased.len,
            file,
            _lease: lease,
        })
    }

    /// Leases every block of a file (`blocks`, `length` bytes) from a
    /// local worker that keeps them in one file holding exactly the file's
    /// bytes, and opens that file. `None` when no local worker has all of
    /// it that way.
    pub async fn lease_local_file(
        &self,
        blocks: &[pb::BlockInfo],
        length: u64,
    ) -> Option<LocalFile> {
        if !self.config().short_circuit {
            return None;
        }
        let (first, rest) = blocks.split_first()?;
        let holds_all = |w: &pb::WorkerAddress| {
            rest.iter().all(|b| {
                b.locations.iter().any(|l| {
                    l.worker
                        .as_ref()
                        .is_some_and(|o| o.worker_id == w.worker_id)
                })
            })
        };
        let holder = first
            .locations
            .iter()
            .filter_map(|l| l.worker.as_ref())
            .filter(|w| self.same_node(w) && !self.workers().failed_recently(&data_addr(w)))
            .find(|w| holds_all(w))?;
        let ranges: Vec<(u64, u64, u64)> = blocks
            .iter()
            .map(|b| (b.block_id, b.offset, b.length))
            .collect();
        let (path, lease) = self
            .leases()
            .take_file(self.workers(), &data_addr(holder), ranges, length)
            .await?;
        let file = std::fs::File::open(path).ok()?;
        self.read_paths().count_passthrough_open();
        Some(LocalFile {
            file,
            _lease: lease,
        })
    }
}

/// The blocks of one open file that a worker on this machine holds,
/// leased as reads reach them and shared by everything reading the file:
/// FUSE answers reads from it on any thread without the open file's lock.
#[derive(Debug)]
pub struct LocalBlocks {
    fs: Arc<FileSystem>,
    blocks: Vec<pb::BlockInfo>,
    block_size: u64,
    length: u64,
    /// Block index -> its lease, or `None` when no local worker had it.
    leased: Mutex<HashMap<usize, Option<Arc<LocalBlock>>>>,
    /// Blocks whose local holder refused the lease (a tier its files are
    /// not reachable from here): not asked again on every read.
    refused: Mutex<std::collections::HashSet<usize>>,
}

impl LocalBlocks {
    pub(crate) fn new(fs: Arc<FileSystem>, file: &pb::FileBlockInfo) -> Self {
        let info = file.file.clone().unwrap_or_default();
        Self {
            fs,
            blocks: file.blocks.clone(),
            block_size: info.block_size.max(1),
            length: info.length,
            leased: Mutex::new(HashMap::new()),
            refused: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Where a read of `size` bytes at `offset` lies: the block's index,
    /// the offset in it, and the bytes to read (fewer only at the end of
    /// the file). `None` when the read crosses into the next block: a
    /// short answer there would tell the kernel the file ends.
    pub fn locate(&self, offset: u64, size: u64) -> Option<(usize, u64, u64)> {
        let index = (offset / self.block_size) as usize;
        let block = self.blocks.get(index)?;
        let within = offset - block.offset;
        let n = size.min(self.length.saturating_sub(offset));
        (within + n <= block.length).then_some((index, within, n))
    }

    /// The lease of block `index` if it was asked for before: `Some(None)`
    /// when no local worker had it, `None` when not asked yet.
    pub fn known(&self, index: usize) -> Option<Option<Arc<LocalBlock>>> {
        self.leased.lock().expect("leased").get(&index).cloned()
    }

    /// The local copy of block `index` (described by `block`, whose
    /// locations may be fresher than the file's at open), leased on first
    /// use.
    pub async fn get(&self, index: usize, block: &pb::BlockInfo) -> Option<Arc<LocalBlock>> {
        if self.refused.lock().expect("refused").contains(&index) {
            return None;
        }
        if let Some(known) = self.known(index)
            && (known.is_some() || self.fs.local_holder(block).is_none())
        {
            return known;
        }
        let leased = self.fs.lease_local(block).await.map(Arc::new);
        if leased.is_none() && self.fs.local_holder(block).is_some() {
            self.refused.lock().expect("refused").insert(index);
        }
        let mut table = self.leased.lock().expect("leased");
        if table.len() >= LEASES_PER_FILE {
            table.retain(|i, _| i.abs_diff(index) < LEASES_PER_FILE / 2);
        }
        table.insert(index, leased.clone());
        leased
    }

    /// The block at `index` as of the file's open.
    pub fn block(&self, index: usize) -> Option<&pb::BlockInfo> {
        self.blocks.get(index)
    }

    /// Drops the lease of block `index` (its read failed).
    pub fn forget(&self, index: usize) {
        self.leased.lock().expect("leased").remove(&index);
    }

    /// Reads `out` from `within` in block `index` if a local worker holds
    /// it; `false` when the read must go another way.
    pub async fn read(
        &self,
        index: usize,
        block: &pb::BlockInfo,
        within: u64,
        out: &mut [u8],
    ) -> bool {
        match self.get(index, block).await {
            Some(local) => read_leased(self, index, &local, within, out),
            None => false,
        }
    }
}

/// Reads from an already leased local block; a failure forgets the lease.
pub fn read_leased(
    table: &LocalBlocks,
    index: usize,
    local: &LocalBlock,
    within: u64,
    out: &mut [u8],
) -> bool {
    if within + out.len() as u64 > local.len {
        return false;
    }
    match local.read_exact_at(out, within) {
        Ok(()) => {
            table
                .fs
                .read_paths()
                .count(super::read_paths::ReadPath::ShortCircuit, out.len());
            true
        }
        Err(e) => {
            tracing::debug!(block = local.block, error = %e, "short-circuit read failed");
            table.forget(index);
            false
        }
    }
}
