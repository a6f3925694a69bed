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

#[derive(Debug, Clone)]
struct BlockMeta {
    tier: usize,
    len: u64,
    last_access: u64,
    pinned: bool,
    leases: u32,
    /// Written through ASYNC_THROUGH and not persisted yet.
    unpersisted: bool,
}

impl BlockMeta {
    fn evictable(&self) -> bool {
        !self.pinned && self.leases == 0 && !self.unpersisted
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
    state: Arc<Mutex<State>>,
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
    pub fn open(tiers: Vec<TierConfig>) -> StoreResult<Self> {
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
                        pinned: false,
                        leases: 0,
                        unpersisted: false,
                    },
                );
            }
        }
        Ok(Self {
            tiers: Arc::new(tiers),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Writes a whole block: a temporary file, synced, then renamed into
    /// the highest tier with room (evicting there first if needed).
    pub fn put(&self, block: u64, data: &[u8], unpersisted: bool) -> StoreResult<String> {
        let len = data.len() as u64;
        let tier = self.place(len)?;
        let dir = &self.tiers[tier].dir;
        let tmp = dir.join(format!("{block}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_data()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            self.state.lock().expect("block store").used[tier] -= len;
            return Err(io(&tmp, e));
        }
        let path = block_path(dir, block);
        fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        let mut st = self.state.lock().expect("block store");
        st.clock += 1;
        let clock = st.clock;
        if let Some(old) = st.blocks.insert(
            block,
            BlockMeta {
                tier,
                len,
                last_access: clock,
                pinned: false,
                leases: 0,
                unpersisted,
            },
        ) {
            // Replaced: release the old copy's space (and file, if elsewhere).
            st.used[old.tier] -= old.len;
            if old.tier != tier {
                let _ = fs::remove_file(block_path(&self.tiers[old.tier].dir, block));
            }
        }
        Ok(self.tiers[tier].name.clone())
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
            let mut candidates: Vec<(u64, u64, u64)> = st
                .blocks
                .iter()
                .filter(|(_, m)| m.tier == i && m.evictable())
                .map(|(b, m)| (m.last_access, *b, m.len))
                .collect();
            candidates.sort_unstable();
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
            let lower = (i + 1..self.tiers.len()).find(|&j| {
                let st = self.state.lock().expect("block store");
                st.used[j] + len <= (self.tiers[j].quota as f64 * self.tiers[j].high) as u64
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
        m.last_access = clock;
        let tier = &self.tiers[m.tier];
        Some(Lease {
            store: self.clone(),
            block,
            path: block_path(&tier.dir, block),
            len: m.len,
            tier: tier.name.clone(),
        })
    }

    pub fn set_pinned(&self, block: u64, pinned: bool) -> StoreResult<()> {
        let mut st = self.state.lock().expect("block store");
        st.blocks
            .get_mut(&block)
            .map(|m| m.pinned = pinned)
            .ok_or(StoreError::NotFound(block))
    }

    pub fn set_persisted(&self, block: u64) -> StoreResult<()> {
        let mut st = self.state.lock().expect("block store");
        st.blocks
            .get_mut(&block)
            .map(|m| m.unpersisted = false)
            .ok_or(StoreError::NotFound(block))
    }

    /// Drops a block (its file is gone); a missing block is fine.
    pub fn remove(&self, block: u64) {
        let mut st = self.state.lock().expect("block store");
        if let Some(m) = st.blocks.get(&block).cloned() {
            let path = block_path(&self.tiers[m.tier].dir, block);
            Self::drop_block(&mut st, block, &path, m.len, m.tier);
        }
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
            let s = BlockStore::open(tiers(dir.path(), 1000, 1000)).unwrap();
            assert_eq!(s.put(7, b"hello", false).unwrap(), "MEM");
            std::fs::write(dir.path().join("mem/8.123.tmp"), b"half").unwrap();
        }
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000)).unwrap();
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
        let s = BlockStore::open(tiers(dir.path(), 1000, 10_000)).unwrap();
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
        let s = BlockStore::open(vec![TierConfig {
            name: "MEM".into(),
            dir: dir.path().join("mem"),
            quota: 1000,
            high: 0.9,
            low: 0.3,
        }])
        .unwrap();
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
        let err = BlockStore::open(t).unwrap_err().to_string();
        assert!(err.contains("tier SSD"), "{err}");
    }
}
