//! Read leases: a leased block is never evicted, so a reader may take its
//! bytes straight from the tier's file; a whole file's blocks are leased
//! at once when one data file holds exactly the file.

use super::{BlockMeta, BlockStore, State};
use crate::block;
use std::fs;
use std::path::PathBuf;

/// A read lease: while held, the block is not evicted. Dropping it ends the
/// lease. The block's bytes are `len` bytes of `path` from `offset`.
#[derive(Debug)]
pub struct Lease {
    store: BlockStore,
    block: u64,
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub tier: String,
}

impl Lease {
    pub fn block(&self) -> u64 {
        self.block
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.store.state.lock().expect("block store");
        if let Some(m) = st.blocks.get_mut(&self.block) {
            m.leases = m.leases.saturating_sub(1);
        }
    }
}

/// Every block of a file, leased, in one data file that holds exactly the
/// file's bytes: what a reader may hand to the kernel as the whole file.
#[derive(Debug)]
pub struct FileLease {
    pub path: PathBuf,
    pub leases: Vec<Lease>,
}

impl BlockStore {
    fn lease_locked(&self, st: &mut State, block: u64) -> Option<Lease> {
        st.clock += 1;
        let clock = st.clock;
        let m = st.blocks.get_mut(&block)?;
        m.leases += 1;
        m.touch(clock);
        let m = m.clone();
        Some(Lease {
            store: self.clone(),
            block,
            path: self.path_of(block, &m),
            offset: m.offset,
            len: m.len,
            tier: self.tiers[m.tier].name.clone(),
        })
    }

    /// Leases a block for reading; `None` when the worker does not have it.
    pub fn lease(&self, block: u64) -> Option<Lease> {
        let mut st = self.state.lock().expect("block store");
        self.lease_locked(&mut st, block)
    }

    /// Leases every block of a file, given in file order as `(block,
    /// offset, len)`, when one data file holds them all and nothing else:
    /// its size is the file's `length`. `None` otherwise (a block missing,
    /// on another tier, or in a file of the earlier layout alongside
    /// others), and nothing stays leased.
    pub fn lease_file(&self, blocks: &[(u64, u64, u64)], length: u64) -> Option<FileLease> {
        let (&(first, _, _), rest) = blocks.split_first()?;
        let mut end = 0;
        for &(block, offset, len) in blocks {
            if offset != end || block::file_of(block) != block::file_of(first) {
                return None;
            }
            end += len;
        }
        if end != length {
            return None;
        }
        let leases = {
            let mut st = self.state.lock().expect("block store");
            let head = st.blocks.get(&first)?.clone();
            let same_place = |m: &BlockMeta, offset: u64, len: u64| {
                m.tier == head.tier && !m.own_file && m.offset == offset && m.len == len
            };
            let fits = if rest.is_empty() {
                head.offset == 0 && head.len == length
            } else {
                blocks.iter().all(|&(b, offset, len)| {
                    st.blocks
                        .get(&b)
                        .is_some_and(|m| same_place(m, offset, len))
                })
            };
            if !fits {
                return None;
            }
            blocks
                .iter()
                .map(|&(b, _, _)| self.lease_locked(&mut st, b))
                .collect::<Option<Vec<_>>>()?
        };
        let path = leases[0].path.clone();
        // A block written past the end and abandoned leaves the file longer.
        let size = fs::metadata(&path).ok()?.len();
        (size == length).then_some(FileLease { path, leases })
    }
}
