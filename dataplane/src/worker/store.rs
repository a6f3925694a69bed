//! A worker's tiered block store. Tiers (MEM, SSD, HDD) are directories
//! with quotas; a block is one file named by its id. A block is written to a
//! temporary file and renamed into place when complete, so a crash never
//! leaves half a block visible, and a restart rebuilds the block list by
//! scanning the directories. New blocks go to the highest tier with room;
//! a tier past its high watermark evicts least-recently-used blocks (to the
//! next tier down when it has room, else away) down to its low watermark.
//! Blocks being read (leased), pinned, or not yet persisted are never
//! evicted.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {0} is not in this worker's store")]
    NotFound(u64),
    #[error(
        "no tier has room for {needed} bytes (every tier is full of blocks that cannot be evicted)"
    )]
    NoSpace { needed: u64 },
    #[error("block store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tier configuration: {0}")]
    Config(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One tier as configured: its name (MEM, SSD, HDD), directory, quota and
/// watermarks (fractions of the quota).
#[derive(Debug, Clone)]
pub struct TierConfig {
    pub name: String,
    pub dir: PathBuf,
    pub quota: u64,
    pub high: f64,
    pub low: f64,
}

/// Which blocks a full tier gives up first.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    /// Least recently used.
    #[default]
    Lru,
    /// Least recently/frequently used: each access adds 1 to a score that
    /// halves every `1/lambda` accesses to the store, so often-read blocks
    /// outlive a one-off scan.
    Lrfu,
}

/// LRFU's decay per store access; 1/128 keeps a block read 10 times
/// ahead of a scan of ~500 blocks.
const LRFU_LAMBDA: f64 = 1.0 / 128.0;

#[derive(Debug, Clone)]
struct BlockMeta {
    tier: usize,
    len: u64,
    last_access: u64,
    /// LRFU's combined recency and frequency at `last_access`.
    crf: f64,
    pinned: bool,
    leases: u32,
    /// Written through ASYNC_THROUGH and not persisted yet.
    unpersisted: bool,
}

impl BlockMeta {
    fn evictable(&self) -> bool {
        !self.pinned && self.leases == 0 && !self.unpersisted
    }

    fn touch(&mut self, clock: u64) {
        self.crf = 1.0 + self.decayed_crf(clock);
        self.last_access = clock;
    }

    fn decayed_crf(&self, clock: u64) -> f64 {
        self.crf * 0.5f64.powf(LRFU_LAMBDA * clock.saturating_sub(self.last_access) as f64)
    }
}

#[derive(Debug, Default)]
struct State {
    blocks: HashMap<u64, BlockMeta>,
    used: Vec<u64>,
    clock: u64,
    /// Blocks dropped from the store since the last `take_removed`, for the
    /// next heartbeat.
    removed: Vec<u64>,
}

/// The tiered store; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct BlockStore {
    tiers: Arc<Vec<TierConfig>>,
    policy: EvictionPolicy,
    state: Arc<Mutex<State>>,
}

fn next_tmp_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A block being written; see [`BlockStore::begin`].
#[derive(Debug)]
pub struct BlockWriter {
    store: BlockStore,
    block: u64,
    tier: usize,
    tmp: PathBuf,
    file: Option<fs::File>,
    reserved: u64,
    limit: u64,
    written: u64,
    unpersisted: bool,
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
        let file = self.file.as_mut().expect("not committed");
        file.write_all(data).map_err(|e| io(&self.tmp, e))?;
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
        if self.file.is_some() || self.reserved > 0 {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
            self.store.state.lock().expect("block store").used[self.tier] -= self.reserved;
        }
    }
}

/// A read lease: while held, the block is not evicted. Dropping it ends the
/// lease.
#[derive(Debug)]
pub struct Lease {
    store: BlockStore,
    block: u64,
    pub path: PathBuf,
    pub len: u64,
    pub tier: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.store.state.lock().expect("block store");
        if let Some(m) = st.blocks.get_mut(&self.block) {
            m.leases = m.leases.saturating_sub(1);
        }
    }
}

fn block_path(dir: &Path, block: u64) -> PathBuf {
    dir.join(block.to_string())
}

impl BlockStore {
    /// Opens the tiers, removing leftovers of interrupted writes and
    /// re-registering every complete block found.
    pub fn open(tiers: Vec<TierConfig>, policy: EvictionPolicy) -> StoreResult<Self> {
        if tiers.is_empty() {
            return Err(StoreError::Config("at least one tier is needed".into()));
        }
        for t in &tiers {
            if !(0.0 < t.low && t.low <= t.high && t.high <= 1.0) {
                return Err(StoreError::Config(format!(
                    "tier {}: watermarks need 0 < low <= high <= 1 (low {}, high {})",
                    t.name, t.low, t.high
                )));
            }
        }
        let mut state = State {
            used: vec![0; tiers.len()],
            ..State::default()
        };
        for (i, t) in tiers.iter().enumerate() {
            fs::create_dir_all(&t.dir).map_err(|e| io(&t.dir, e))?;
            for entry in fs::read_dir(&t.dir).map_err(|e| io(&t.dir, e))? {
                let entry = entry.map_err(|e| io(&t.dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    // Half-written by a worker that died: never visible.
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                let Ok(block) = name.parse::<u64>() else {
                    continue;
                };
                let len = entry.metadata().map_err(|e| io(&entry.path(), e))?.len();
                state.used[i] += len;
                state.blocks.insert(
                    block,
                    BlockMeta {
                        tier: i,
                        len,
                        last_access: 0,
                        crf: 0.0,
                        pinned: false,
                        leases: 0,
                        unpersisted: false,
                    },
                );
            }
        }
        Ok(Self {
            tiers: Arc::new(tiers),
            policy,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Writes a whole block: a temporary file, synced, then renamed into
    /// the highest tier with room (evicting there first if needed).
    pub fn put(&self, block: u64, data: &[u8], unpersisted: bool) -> StoreResult<String> {
        let mut w = self.begin(block, data.len() as u64, unpersisted)?;
        w.write(data)?;
        w.commit()
    }

    /// Starts writing a block of at most `len` bytes: the space is reserved
    /// in the highest tier with room and the bytes go to a temporary file
    /// that [`BlockWriter::commit`] renames into place. Dropping the writer
    /// uncommitted removes the file and the reservation.
    pub fn begin(&self, block: u64, len: u64, unpersisted: bool) -> StoreResult<BlockWriter> {
        self.begin_growable(block, len, len, unpersisted)
    }

    /// Like [`BlockStore::begin`] for a block of unknown length up to
    /// `limit`: `initial` bytes are reserved now, more as they are written
    /// (a small file written to a small tier does not need a whole block).
    pub fn begin_growable(
        &self,
        block: u64,
        initial: u64,
        limit: u64,
        unpersisted: bool,
    ) -> StoreResult<BlockWriter> {
        let len = initial.min(limit);
        let tier = self.place(len)?;
        let tmp = self.tiers[tier].dir.join(format!(
            "{block}.{}.{}.tmp",
            std::process::id(),
            next_tmp_id()
        ));
        let file = match fs::File::create(&tmp) {
            Ok(f) => f,
            Err(e) => {
                self.state.lock().expect("block store").used[tier] -= len;
                return Err(io(&tmp, e));
            }
        };
        Ok(BlockWriter {
            store: self.clone(),
            block,
            tier,
            tmp,
            file: Some(file),
            reserved: len,
            limit,
            written: 0,
            unpersisted,
        })
    }

    fn finish(&self, w: &mut BlockWriter) -> StoreResult<String> {
        let file = w.file.take().expect("committed once");
        file.sync_data().map_err(|e| io(&w.tmp, e))?;
        drop(file);
        let path = block_path(&self.tiers[w.tier].dir, w.block);
        fs::rename(&w.tmp, &path).map_err(|e| io(&path, e))?;
        let mut st = self.state.lock().expect("block store");
        // Give back what was reserved but not written.
        st.used[w.tier] -= w.reserved - w.written;
        st.clock += 1;
        let clock = st.clock;
        if let Some(old) = st.blocks.insert(
            w.block,
            BlockMeta {
                tier: w.tier,
                len: w.written,
                last_access: clock,
                crf: 1.0,
                pinned: false,
                leases: 0,
                unpersisted: w.unpersisted,
            },
        ) {
            // Replaced: release the old copy's space (and file, if elsewhere).
            st.used[old.tier] -= old.len;
            if old.tier != w.tier {
                let _ = fs::remove_file(block_path(&self.tiers[old.tier].dir, w.block));
            }
        }
        w.reserved = 0;
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

    /// Reserves `len` bytes in the highest tier that has (or can make)
    /// room; returns the tier.
    fn place(&self, len: u64) -> StoreResult<usize> {
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
    fn evict_tier(&self, i: usize, extra: u64) -> StoreResult<()> {
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
            let from = block_path(&t.dir, block);
            // Demote to a lower tier (not to another directory of this one).
            let lower = (i + 1..self.tiers.len()).find(|&j| {
                self.tiers[j].name != t.name && {
                    let st = self.state.lock().expect("block store");
                    st.used[j] + len <= (self.tiers[j].quota as f64 * self.tiers[j].high) as u64
                }
            });
            let mut st = self.state.lock().expect("block store");
            // It may have been leased or pinned since the scan.
            match st.blocks.get(&block) {
                Some(m) if m.tier == i && m.evictable() => {}
                _ => continue,
            }
            match lower {
                Some(j) => {
                    let to = block_path(&self.tiers[j].dir, block);
                    if fs::copy(&from, &to).is_ok() {
                        let _ = fs::remove_file(&from);
                        st.used[i] -= len;
                        st.used[j] += len;
                        if let Some(m) = st.blocks.get_mut(&block) {
                            m.tier = j;
                        }
                        continue;
                    }
                    let _ = fs::remove_file(&to);
                    Self::drop_block(&mut st, block, &from, len, i);
                }
                None => Self::drop_block(&mut st, block, &from, len, i),
            }
        }
        Ok(())
    }

    fn drop_block(st: &mut State, block: u64, path: &Path, len: u64, tier: usize) {
        let _ = fs::remove_file(path);
        st.used[tier] -= len;
        st.blocks.remove(&block);
        st.removed.push(block);
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

    /// Leases a block for reading; `None` when the worker does not have it.
    pub fn lease(&self, block: u64) -> Option<Lease> {
        let mut st = self.state.lock().expect("block store");
        st.clock += 1;
        let clock = st.clock;
        let m = st.blocks.get_mut(&block)?;
        m.leases += 1;
        m.touch(clock);
        let tier = &self.tiers[m.tier];
        Some(Lease {
            store: self.clone(),
            block,
            path: block_path(&tier.dir, block),
            len: m.len,
            tier: tier.name.clone(),
        })
    }

    fn update(&self, block: u64, change: impl FnOnce(&mut BlockMeta)) -> StoreResult<()> {
        let mut st = self.state.lock().expect("block store");
        st.blocks
            .get_mut(&block)
            .map(change)
            .ok_or(StoreError::NotFound(block))
    }

    pub fn set_pinned(&self, block: u64, pinned: bool) -> StoreResult<()> {
        self.update(block, |m| m.pinned = pinned)
    }

    pub fn set_persisted(&self, block: u64) -> StoreResult<()> {
        self.update(block, |m| m.unpersisted = false)
    }

    /// Marks a block written through ASYNC_THROUGH (after a restart, from
    /// the persist journal) so it is not evicted before it is persisted.
    pub fn mark_unpersisted(&self, block: u64) -> StoreResult<()> {
        self.update(block, |m| m.unpersisted = true)
    }

    fn drop_if(&self, block: u64, allowed: impl FnOnce(&BlockMeta) -> bool) {
        let mut st = self.state.lock().expect("block store");
        if let Some(m) = st.blocks.get(&block).cloned()
            && allowed(&m)
        {
            let path = block_path(&self.tiers[m.tier].dir, block);
            Self::drop_block(&mut st, block, &path, m.len, m.tier);
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

    /// Exactly `pinned` (of the blocks held) are pinned afterwards.
    pub fn set_pinned_set(&self, pinned: &std::collections::HashSet<u64>) {
        let mut st = self.state.lock().expect("block store");
        for (b, m) in st.blocks.iter_mut() {
            m.pinned = pinned.contains(b);
        }
    }

    /// Puts back removals a failed heartbeat did not deliver.
    pub fn requeue_removed(&self, blocks: Vec<u64>) {
        self.state
            .lock()
            .expect("block store")
            .removed
            .extend(blocks);
    }

    /// Blocks held per tier.
    pub fn block_counts(&self) -> Vec<u64> {
        let st = self.state.lock().expect("block store");
        let mut counts = vec![0; self.tiers.len()];
        for m in st.blocks.values() {
            counts[m.tier] += 1;
        }
        counts
    }

    /// Bytes each tier holds before eviction starts (quota x high
    /// watermark), in tier order.
    pub fn holdable(&self) -> Vec<u64> {
        self.tiers
            .iter()
            .map(|t| (t.quota as f64 * t.high) as u64)
            .collect()
    }

    /// The tier holding `block`, if any.
    pub fn tier_of(&self, block: u64) -> Option<String> {
        let st = self.state.lock().expect("block store");
        st.blocks
            .get(&block)
            .map(|m| self.tiers[m.tier].name.clone())
    }

    pub fn contains(&self, block: u64) -> bool {
        self.state
            .lock()
            .expect("block store")
            .blocks
            .contains_key(&block)
    }

    /// Every block held, with its tier name (a full block report).
    pub fn report(&self) -> Vec<(u64, String)> {
        let st = self.state.lock().expect("block store");
        st.blocks
            .iter()
            .map(|(b, m)| (*b, self.tiers[m.tier].name.clone()))
            .collect()
    }

    /// Blocks dropped since the last call.
    pub fn take_removed(&self) -> Vec<u64> {
        std::mem::take(&mut self.state.lock().expect("block store").removed)
    }

    /// `(tier name, quota, used)` per tier.
    pub fn usage(&self) -> Vec<(String, u64, u64)> {
        let st = self.state.lock().expect("block store");
        self.tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), t.quota, st.used[i]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lone MEM tier with the given quota and watermarks.
    fn mem_tier(root: &Path, quota: u64, high: f64, low: f64) -> Vec<TierConfig> {
        vec![TierConfig {
            name: "MEM".into(),
            dir: root.join("mem"),
            quota,
            high,
            low,
        }]
    }

    fn tiers(root: &Path, mem: u64, ssd: u64) -> Vec<TierConfig> {
        vec![
            TierConfig {
                name: "MEM".into(),
                dir: root.join("mem"),
                quota: mem,
                high: 0.9,
                low: 0.5,
            },
            TierConfig {
                name: "SSD".into(),
                dir: root.join("ssd"),
                quota: ssd,
                high: 0.9,
                low: 0.5,
            },
        ]
    }

    #[test]
    fn blocks_survive_a_restart_and_half_writes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
            assert_eq!(s.put(7, b"hello", false).unwrap(), "MEM");
            std::fs::write(dir.path().join("mem/8.123.tmp"), b"half").unwrap();
        }
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
        let lease = s.lease(7).expect("block 7 kept");
        assert_eq!(std::fs::read(&lease.path).unwrap(), b"hello");
        assert_eq!((lease.len, lease.tier.as_str()), (5, "MEM"));
        assert!(
            !dir.path().join("mem/8.123.tmp").exists(),
            "leftover removed"
        );
        assert!(s.lease(8).is_none());
        assert_eq!(s.usage()[0], ("MEM".into(), 1000, 5));
    }

    #[test]
    fn a_full_tier_evicts_lru_to_its_low_watermark_by_demotion() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlockStore::open(tiers(dir.path(), 1000, 10_000), EvictionPolicy::Lru).unwrap();
        for b in 0..9 {
            assert_eq!(s.put(b, &[b as u8; 100], false).unwrap(), "MEM");
        }
        drop(s.lease(0)); // block 0 becomes the most recently used
        // 900 used = high watermark; the next block makes MEM evict to 500.
        assert_eq!(s.put(9, &[9; 100], false).unwrap(), "MEM");
        let usage = s.usage();
        assert!(usage[0].2 <= 500 + 100, "MEM at {}", usage[0].2);
        let lease1 = s.lease(1).unwrap();
        assert_eq!(
            lease1.tier, "SSD",
            "the least recently used block was demoted"
        );
        assert_eq!(std::fs::read(&lease1.path).unwrap(), vec![1u8; 100]);
        assert_eq!(s.lease(0).unwrap().tier, "MEM", "recently used stays");
        assert!(s.take_removed().is_empty(), "demoted, not dropped");
    }

    #[test]
    fn pinned_leased_and_unpersisted_blocks_are_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            BlockStore::open(mem_tier(dir.path(), 1000, 0.9, 0.3), EvictionPolicy::Lru).unwrap();
        s.put(1, &[1; 200], false).unwrap();
        s.put(2, &[2; 200], false).unwrap();
        s.put(3, &[3; 200], true).unwrap();
        s.put(4, &[4; 200], false).unwrap();
        s.set_pinned(1, true).unwrap();
        let held = s.lease(2).unwrap();
        // Needs room: only block 4 may go.
        s.put(5, &[5; 200], false).unwrap();
        assert!(s.lease(1).is_some() && s.lease(3).is_some());
        assert!(s.lease(4).is_none(), "the only evictable block went");
        assert_eq!(s.take_removed(), vec![4]);
        drop(held);
        // Everything left is pinned, unpersisted or needed: no room.
        s.set_persisted(3).unwrap();
        assert!(
            s.put(6, &[6; 300], false).is_ok(),
            "persisted and unleased blocks can now go"
        );
        assert!(matches!(
            s.put(7, &[7; 2000], false),
            Err(StoreError::NoSpace { needed: 2000 })
        ));
    }

    #[test]
    fn bad_watermarks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tiers(dir.path(), 10, 10);
        t[1].low = 0.95;
        let err = BlockStore::open(t, EvictionPolicy::Lru)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tier SSD"), "{err}");
    }

    #[test]
    fn lrfu_keeps_a_hot_block_through_a_scan_that_lru_would_evict_it_for() {
        for (policy, hot_survives) in [(EvictionPolicy::Lru, false), (EvictionPolicy::Lrfu, true)] {
            let dir = tempfile::tempdir().unwrap();
            let s = BlockStore::open(mem_tier(dir.path(), 1000, 1.0, 0.8), policy).unwrap();
            s.put(0, &[0; 100], false).unwrap();
            for _ in 0..20 {
                drop(s.lease(0));
            }
            // A scan: each new block read once, pushing the store past full.
            for b in 1..=10 {
                s.put(b, &[1; 100], false).unwrap();
                drop(s.lease(b));
            }
            assert_eq!(s.lease(0).is_some(), hot_survives, "{policy:?}");
        }
    }

    #[test]
    fn an_abandoned_block_write_leaves_no_file_and_no_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
        let mut w = s.begin(5, 600, false).unwrap();
        w.write(&[5; 300]).unwrap();
        assert!(w.write(&[5; 400]).is_err(), "longer than its limit");
        assert_eq!(s.usage()[0].2, 600, "reserved while writing");
        drop(w);
        assert_eq!(s.usage()[0].2, 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("mem")).unwrap().count(),
            0
        );
        assert!(s.lease(5).is_none());
        // A committed short block gives back the unused reservation.
        let mut w = s.begin(6, 600, false).unwrap();
        w.write(&[6; 250]).unwrap();
        assert_eq!(w.commit().unwrap(), "MEM");
        assert_eq!(s.usage()[0].2, 250);
        assert_eq!(s.lease(6).unwrap().len, 250);
    }
}
