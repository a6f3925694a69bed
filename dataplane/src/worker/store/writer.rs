//! Writing a block: space reserved in the highest tier with room, bytes
//! written at the block's offset in its data file, then synced and marked
//! visible; an abandoned write gives its range and reservation back.

use super::layout::{data_path, marker_path, open_data_file, punch};
use super::{BlockMeta, BlockStore, State, StoreError, StoreResult, io};
use crate::block;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A block being written; see [`BlockStore::begin`].
#[derive(Debug)]
pub struct BlockWriter {
    store: BlockStore,
    block: u64,
    tier: usize,
    offset: u64,
    path: PathBuf,
    file: fs::File,
    reserved: u64,
    limit: u64,
    written: u64,
    unpersisted: bool,
    committed: bool,
}

impl BlockWriter {
    pub fn write(&mut self, data: &[u8]) -> StoreResult<()> {
        let needed = self.written + data.len() as u64;
        if needed > self.limit {
            return Err(StoreError::Config(format!(
                "block {} is longer than its {} byte limit",
                self.block, self.limit
            )));
        }
        if needed > self.reserved {
            // Grow in steps of at least 4 MiB, within the limit.
            let extra = (needed - self.reserved)
                .max(4 << 20)
                .min(self.limit - self.reserved);
            self.store.grow(self.tier, extra)?;
            self.reserved += extra;
        }
        self.file
            .write_all_at(data, self.offset + self.written)
            .map_err(|e| io(&self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn tier(&self) -> &str {
        &self.store.tiers[self.tier].name
    }

    /// Makes the block visible; returns the tier it went to.
    pub fn commit(mut self) -> StoreResult<String> {
        let store = self.store.clone();
        store.finish(&mut self)
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(e) = punch(&self.file, self.offset, self.written) {
            tracing::warn!(block = self.block, error = %e, "punching an abandoned block out");
        }
        let mut st = self.store.state.lock().expect("block store");
        st.used[self.tier] -= self.reserved;
        st.writing.remove(&self.block);
        st.release_file(&self.store.tiers, self.tier, block::file_of(self.block));
    }
}

impl BlockStore {
    /// Writes a whole block at `offset` (its offset in its file): synced,
    /// then made visible, in the highest tier with room (evicting there
    /// first if needed).
    pub fn put(
        &self,
        block: u64,
        offset: u64,
        data: &[u8],
        unpersisted: bool,
    ) -> StoreResult<String> {
        let mut w = self.begin(block, offset, data.len() as u64, unpersisted)?;
        w.write(data)?;
        w.commit()
    }

    /// Starts writing a block of at most `len` bytes that starts at
    /// `offset` in its file: the space is reserved in the highest tier with
    /// room and [`BlockWriter::commit`] makes the block visible. Dropping
    /// the writer uncommitted gives the range and the reservation back.
    pub fn begin(
        &self,
        block: u64,
        offset: u64,
        len: u64,
        unpersisted: bool,
    ) -> StoreResult<BlockWriter> {
        self.begin_growable(block, offset, len, len, unpersisted)
    }

    /// Like [`BlockStore::begin`] for a block of unknown length up to
    /// `limit`: `initial` bytes are reserved now, more as they are written
    /// (a small file written to a small tier does not need a whole block).
    pub fn begin_growable(
        &self,
        block: u64,
        offset: u64,
        initial: u64,
        limit: u64,
        unpersisted: bool,
    ) -> StoreResult<BlockWriter> {
        {
            let mut st = self.state.lock().expect("block store");
            if st.blocks.contains_key(&block) || !st.writing.insert(block) {
                return Err(StoreError::Exists(block));
            }
        }
        let len = initial.min(limit);
        let tier = match self.place(len) {
            Ok(t) => t,
            Err(e) => {
                self.state
                    .lock()
                    .expect("block store")
                    .writing
                    .remove(&block);
                return Err(e);
            }
        };
        let inode = block::file_of(block);
        self.state
            .lock()
            .expect("block store")
            .take_file(tier, inode);
        let path = data_path(&self.tiers[tier].dir, inode);
        match open_data_file(&path) {
            Ok(file) => Ok(BlockWriter {
                store: self.clone(),
                block,
                tier,
                offset,
                path,
                file,
                reserved: len,
                limit,
                written: 0,
                unpersisted,
                committed: false,
            }),
            Err(e) => {
                let mut st = self.state.lock().expect("block store");
                st.used[tier] -= len;
                st.writing.remove(&block);
                st.release_file(&self.tiers, tier, inode);
                Err(io(&path, e))
            }
        }
    }

    fn finish(&self, w: &mut BlockWriter) -> StoreResult<String> {
        w.file.sync_data().map_err(|e| io(&w.path, e))?;
        let marker = marker_path(&self.tiers[w.tier].dir, w.block, w.offset, w.written);
        fs::File::create(&marker).map_err(|e| io(&marker, e))?;
        let mut st = self.state.lock().expect("block store");
        // Give back what was reserved but not written.
        st.used[w.tier] -= w.reserved - w.written;
        st.writing.remove(&w.block);
        st.clock += 1;
        let clock = st.clock;
        st.blocks.insert(
            w.block,
            BlockMeta {
                tier: w.tier,
                offset: w.offset,
                len: w.written,
                own_file: false,
                last_access: clock,
                crf: 1.0,
                pinned: false,
                leases: 0,
                unpersisted: w.unpersisted,
            },
        );
        w.committed = true;
        Ok(self.tiers[w.tier].name.clone())
    }

    /// Reserves `extra` more bytes in tier `i` (evicting there if needed).
    fn grow(&self, i: usize, extra: u64) -> StoreResult<()> {
        let t = &self.tiers[i];
        let fits = |st: &State| st.used[i] + extra <= (t.quota as f64 * t.high) as u64;
        for attempt in 0..2 {
            {
                let mut st = self.state.lock().expect("block store");
                if fits(&st) {
                    st.used[i] += extra;
                    return Ok(());
                }
            }
            if attempt == 0 {
                self.evict_tier(i, extra)?;
            }
        }
        Err(StoreError::NoSpace { needed: extra })
    }
}
