//! A worker's tiered block store. Tiers (MEM, SSD, HDD) are directories
//! with quotas. The blocks of one file that a tier holds live in one sparse
//! data file, `<inode>.data`, each at its offset in the file, so a file whose
//! every block is on one tier can be handed to the kernel whole (FUSE
//! passthrough) and read at `cat` speed. A block becomes visible when its
//! bytes are synced and its marker, `<block>.<offset>.<len>.block`, is
//! created; dropping a block removes the marker and punches its range out of
//! the data file, and the data file goes with its last block. A restart
//! rebuilds the block list from the markers and punches out whatever else a
//! data file holds (a block half-written when the worker died), so a crash
//! never leaves half a block visible or its space taken.
//!
//! New blocks go to the highest tier with room; a tier past its high
//! watermark evicts least-recently-used blocks (to the next tier down when
//! it has room, else away) down to its low watermark. Blocks being read
//! (leased), pinned, or not yet persisted are never evicted.
//!
//! Block files of the earlier layout (one file per block, named by its id)
//! are still read, demoted and evicted as they are, so an upgraded worker
//! keeps its cache and, above all, blocks it has not persisted yet.

mod evict;
mod layout;
mod lease;
#[cfg(test)]
mod tests;
mod writer;

pub use lease::{FileLease, Lease};
pub use writer::BlockWriter;

use crate::block;
use layout::{data_path, own_file_path};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {0} is not in this worker's store")]
    NotFound(u64),
    #[error("block {0} is already cached or being written here")]
    Exists(u64),
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

pub(super) fn io(path: &Path, source: std::io::Error) -> StoreError {
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
pub(super) struct BlockMeta {
    pub tier: usize,
    /// Where the block starts in its data file: its offset in the file it
    /// belongs to (0 for a block in a file of its own).
    pub offset: u64,
    pub len: u64,
    /// A block file of the earlier layout.
    pub own_file: bool,
    pub last_access: u64,
    /// LRFU's combined recency and frequency at `last_access`.
    pub crf: f64,
    pub pinned: bool,
    pub leases: u32,
    /// Written through ASYNC_THROUGH and not persisted yet.
    pub unpersisted: bool,
}

impl BlockMeta {
    pub fn evictable(&self) -> bool {
        !self.pinned && self.leases == 0 && !self.unpersisted
    }

    pub fn touch(&mut self, clock: u64) {
        self.crf = 1.0 + self.decayed_crf(clock);
        self.last_access = clock;
    }

    pub fn decayed_crf(&self, clock: u64) -> f64 {
        self.crf * 0.5f64.powf(LRFU_LAMBDA * clock.saturating_sub(self.last_access) as f64)
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub blocks: HashMap<u64, BlockMeta>,
    pub used: Vec<u64>,
    pub clock: u64,
    /// Blocks dropped from the store since the last `take_removed`, for the
    /// next heartbeat.
    pub removed: Vec<u64>,
    /// `(tier, inode)` -> blocks committed to or being written into that
    /// data file; the file is removed when the count drops to zero, and
    /// only then, so a writer never writes into a file already unlinked.
    pub files: HashMap<(usize, u64), u32>,
    /// Blocks being written: a second writer of one block would write the
    /// same range of the same data file.
    pub writing: HashSet<u64>,
}

/// The tiered store; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct BlockStore {
    tiers: Arc<Vec<TierConfig>>,
    policy: EvictionPolicy,
    state: Arc<Mutex<State>>,
}

impl State {
    pub fn take_file(&mut self, tier: usize, inode: u64) {
        *self.files.entry((tier, inode)).or_default() += 1;
    }

    /// One block of the data file fewer; the file goes with its last.
    pub fn release_file(&mut self, tiers: &[TierConfig], tier: usize, inode: u64) {
        let key = (tier, inode);
        let Some(n) = self.files.get_mut(&key) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.files.remove(&key);
            let _ = fs::remove_file(data_path(&tiers[tier].dir, inode));
        }
    }
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
            Self::scan_tier(&mut state, i, t)?;
        }
        Ok(Self {
            tiers: Arc::new(tiers),
            policy,
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub(super) fn register(
        state: &mut State,
        block: u64,
        tier: usize,
        offset: u64,
        len: u64,
        own: bool,
    ) {
        state.used[tier] += len;
        state.blocks.insert(
            block,
            BlockMeta {
                tier,
                offset,
                len,
                own_file: own,
                last_access: 0,
                crf: 0.0,
                pinned: false,
                leases: 0,
                unpersisted: false,
            },
        );
    }

    /// Where a block's bytes live.
    pub(super) fn path_of(&self, block: u64, m: &BlockMeta) -> PathBuf {
        let dir = &self.tiers[m.tier].dir;
        if m.own_file {
            own_file_path(dir, block)
        } else {
            data_path(dir, block::file_of(block))
        }
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
