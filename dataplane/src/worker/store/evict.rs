//! Room and eviction: a new block goes to the highest tier with room; a
//! tier past its high watermark gives up its least recently (or, under
//! LRFU, least frequently) used blocks, demoted to the next tier down when
//! that has room, else dropped, down to its low watermark. Blocks being
//! read, pinned or not yet persisted are never evicted.

use super::layout::{data_path, marker_path, open_data_file, own_file_path, punch_path};
use super::{BlockMeta, BlockStore, EvictionPolicy, State, StoreError, StoreResult, io};
use crate::block;
use std::fs;
use std::os::unix::fs::FileExt;

impl BlockStore {
    /// Reserves `len` bytes in the highest tier that has (or can make)
    /// room; returns the tier.
    pub(super) fn place(&self, len: u64) -> StoreResult<usize> {
        for (i, t) in self.tiers.iter().enumerate() {
            if len > t.quota {
                continue;
            }
            let fits = |st: &State| st.used[i] + len <= (t.quota as f64 * t.high) as u64;
            {
                let mut st = self.state.lock().expect("block store");
                if fits(&st) {
                    st.used[i] += len;
                    return Ok(i);
                }
            }
            self.evict_tier(i, len)?;
            let mut st = self.state.lock().expect("block store");
            if fits(&st) {
                st.used[i] += len;
                return Ok(i);
            }
        }
        Err(StoreError::NoSpace { needed: len })
    }

    /// Evicts least-recently-used blocks of tier `i` until it is at its low
    /// watermark (and has `extra` bytes free under the high one). Demotes to
    /// the next tier when that has room; otherwise drops.
    pub(super) fn evict_tier(&self, i: usize, extra: u64) -> StoreResult<()> {
        let t = &self.tiers[i];
        let target = ((t.quota as f64 * t.low) as u64)
            .min(((t.quota as f64 * t.high) as u64).saturating_sub(extra));
        let victims: Vec<(u64, u64)> = {
            let st = self.state.lock().expect("block store");
            let mut candidates: Vec<(f64, u64, u64)> = st
                .blocks
                .iter()
                .filter(|(_, m)| m.tier == i && m.evictable())
                .map(|(b, m)| {
                    let rank = match self.policy {
                        EvictionPolicy::Lru => m.last_access as f64,
                        EvictionPolicy::Lrfu => m.decayed_crf(st.clock),
                    };
                    (rank, *b, m.len)
                })
                .collect();
            candidates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut used = st.used[i];
            let mut out = Vec::new();
            for (_, b, len) in candidates {
                if used <= target {
                    break;
                }
                used -= len;
                out.push((b, len));
            }
            out
        };
        for (block, len) in victims {
            // Demote to a lower tier (not to another directory of this one).
            let lower = (i + 1..self.tiers.len()).find(|&j| {
                self.tiers[j].name != t.name && {
                    let st = self.state.lock().expect("block store");
                    st.used[j] + len <= (self.tiers[j].quota as f64 * self.tiers[j].high) as u64
                }
            });
            let mut st = self.state.lock().expect("block store");
            // It may have been leased or pinned since the scan.
            let m = match st.blocks.get(&block) {
                Some(m) if m.tier == i && m.evictable() => m.clone(),
                _ => continue,
            };
            if let Some(j) = lower {
                match self.copy_block(&mut st, block, &m, j) {
                    Ok(()) => {
                        self.forget_bytes(&mut st, block, &m);
                        st.used[j] += len;
                        if let Some(moved) = st.blocks.get_mut(&block) {
                            moved.tier = j;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(block, error = %e, "demoting a block failed; dropping it");
                    }
                }
            }
            self.drop_block(&mut st, block);
        }
        Ok(())
    }

    /// Copies a block's bytes into tier `j`, to the same place in the same
    /// kind of file, synced and marked: should the worker die before the
    /// source is forgotten, a restart keeps the higher tier's copy.
    fn copy_block(&self, st: &mut State, block: u64, m: &BlockMeta, j: usize) -> StoreResult<()> {
        let from = self.path_of(block, m);
        let dir = &self.tiers[j].dir;
        let (to, marker) = if m.own_file {
            (own_file_path(dir, block), None)
        } else {
            (
                data_path(dir, block::file_of(block)),
                Some(marker_path(dir, block, m.offset, m.len)),
            )
        };
        if !m.own_file {
            st.take_file(j, block::file_of(block));
        }
        let copied = (|| {
            let src = fs::File::open(&from).map_err(|e| io(&from, e))?;
            let dst = open_data_file(&to).map_err(|e| io(&to, e))?;
            let mut buf = vec![0u8; (1 << 20).min(m.len.max(1)) as usize];
            let mut done = 0;
            while done < m.len {
                let n = buf.len().min((m.len - done) as usize);
                let chunk = &mut buf[..n];
                src.read_exact_at(chunk, m.offset + done)
                    .map_err(|e| io(&from, e))?;
                dst.write_all_at(chunk, m.offset + done)
                    .map_err(|e| io(&to, e))?;
                done += n as u64;
            }
            dst.sync_data().map_err(|e| io(&to, e))?;
            if let Some(marker) = &marker {
                fs::File::create(marker).map_err(|e| io(marker, e))?;
            }
            Ok(())
        })();
        if copied.is_err() {
            if m.own_file {
                let _ = fs::remove_file(&to);
            } else {
                punch_path(&to, m.offset, m.len);
                st.release_file(&self.tiers, j, block::file_of(block));
            }
        }
        copied
    }

    /// Removes a block's bytes from its tier (marker first, so a crash in
    /// between never shows a block whose range is punched) and its space
    /// from the tier's count; the block's entry stays to the caller.
    fn forget_bytes(&self, st: &mut State, block: u64, m: &BlockMeta) {
        let dir = &self.tiers[m.tier].dir;
        if m.own_file {
            let _ = fs::remove_file(own_file_path(dir, block));
        } else {
            let _ = fs::remove_file(marker_path(dir, block, m.offset, m.len));
            punch_path(&data_path(dir, block::file_of(block)), m.offset, m.len);
            st.release_file(&self.tiers, m.tier, block::file_of(block));
        }
        st.used[m.tier] -= m.len;
    }

    pub(super) fn drop_block(&self, st: &mut State, block: u64) {
        if let Some(m) = st.blocks.remove(&block) {
            self.forget_bytes(st, block, &m);
            st.removed.push(block);
        }
    }

    /// Evicts every tier that is over its high watermark.
    pub fn enforce_watermarks(&self) -> StoreResult<()> {
        for i in 0..self.tiers.len() {
            let over = {
                let st = self.state.lock().expect("block store");
                st.used[i] > (self.tiers[i].quota as f64 * self.tiers[i].high) as u64
            };
            if over {
                self.evict_tier(i, 0)?;
            }
        }
        Ok(())
    }

    fn drop_if(&self, block: u64, allowed: impl FnOnce(&BlockMeta) -> bool) {
        let mut st = self.state.lock().expect("block store");
        if st.blocks.get(&block).is_some_and(allowed) {
            self.drop_block(&mut st, block);
        }
    }

    /// Drops a block (its file is gone); a missing block is fine.
    pub fn remove(&self, block: u64) {
        self.drop_if(block, |_| true);
    }

    /// Drops a block the master says is no longer wanted (its file is gone,
    /// or a user freed it) unless it is being read or not yet persisted.
    pub fn free(&self, block: u64) {
        self.drop_if(block, |m| m.leases == 0 && !m.unpersisted);
    }
}
