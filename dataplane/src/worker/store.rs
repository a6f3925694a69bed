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

use crate::block;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
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
    /// Where the block starts in its data file: its offset in the file it
    /// belongs to (0 for a block in a file of its own).
    offset: u64,
    len: u64,
    /// A block file of the earlier layout.
    own_file: bool,
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
    /// `(tier, inode)` -> blocks committed to or being written into that
    /// data file; the file is removed when the count drops to zero, and
    /// only then, so a writer never writes into a file already unlinked.
    files: HashMap<(usize, u64), u32>,
    /// Blocks being written: a second writer of one block would write the
    /// same range of the same data file.
    writing: HashSet<u64>,
}

/// The tiered store; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct BlockStore {
    tiers: Arc<Vec<TierConfig>>,
    policy: EvictionPolicy,
    state: Arc<Mutex<State>>,
}

fn data_path(dir: &Path, inode: u64) -> PathBuf {
    dir.join(format!("{inode}.data"))
}

fn marker_path(dir: &Path, block: u64, offset: u64, len: u64) -> PathBuf {
    dir.join(format!("{block}.{offset}.{len}.block"))
}

/// A block file of the earlier layout.
fn own_file_path(dir: &Path, block: u64) -> PathBuf {
    dir.join(block.to_string())
}

fn parse_marker(name: &str) -> Option<(u64, u64, u64)> {
    let mut parts = name.strip_suffix(".block")?.split('.');
    let block = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let len = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((block, offset, len))
}

/// Gives a range of a data file back to the file system.
fn punch(file: &fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    use nix::fcntl::{FallocateFlags, fallocate};
    fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as libc::off_t,
        len as libc::off_t,
    )
    .map_err(std::io::Error::from)
}

fn punch_path(path: &Path, offset: u64, len: u64) {
    let punched = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| punch(&f, offset, len));
    if let Err(e) = punched {
        // The range is no longer a block either way; only its space waits
        // for the data file to go.
        tracing::warn!(path = %path.display(), offset, len, error = %e, "punching a dropped block out");
    }
}

fn open_data_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl State {
    fn take_file(&mut self, tier: usize, inode: u64) {
        *self.files.entry((tier, inode)).or_default() += 1;
    }

    /// One block of the data file fewer; the file goes with its last.
    fn release_file(&mut self, tiers: &[TierConfig], tier: usize, inode: u64) {
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

    fn scan_tier(state: &mut State, i: usize, t: &TierConfig) -> StoreResult<()> {
        fs::create_dir_all(&t.dir).map_err(|e| io(&t.dir, e))?;
        let mut markers = Vec::new();
        let mut data_files = HashSet::new();
        for entry in fs::read_dir(&t.dir).map_err(|e| io(&t.dir, e))? {
            let entry = entry.map_err(|e| io(&t.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // Half-written by a worker of the earlier layout that died.
                let _ = fs::remove_file(entry.path());
            } else if let Some(m) = parse_marker(&name) {
                markers.push(m);
            } else if let Some(inode) = name.strip_suffix(".data").and_then(|n| n.parse().ok()) {
                data_files.insert(inode);
            } else if let Ok(block) = name.parse::<u64>() {
                if state.blocks.contains_key(&block) {
                    // A higher tier has it (a demotion cut short).
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                let len = entry.metadata().map_err(|e| io(&entry.path(), e))?.len();
                Self::register(state, block, i, 0, len, true);
            }
        }
        let mut ranges: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
        for (block, offset, len) in markers {
            let inode = block::file_of(block);
            let marker = marker_path(&t.dir, block, offset, len);
            let size = fs::metadata(data_path(&t.dir, inode)).map(|m| m.len());
            let whole = data_files.contains(&inode) && size.is_ok_and(|s| s >= offset + len);
            if !whole || state.blocks.contains_key(&block) {
                // Its bytes are gone, or a higher tier has it (a demotion
                // cut short): the range is punched out below.
                let _ = fs::remove_file(&marker);
                continue;
            }
            Self::register(state, block, i, offset, len, false);
            state.take_file(i, inode);
            ranges.entry(inode).or_default().push((offset, len));
        }
        for inode in data_files {
            let path = data_path(&t.dir, inode);
            let Some(mut held) = ranges.remove(&inode) else {
                let _ = fs::remove_file(&path);
                continue;
            };
            // Give back every byte no marker covers.
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            held.sort_unstable();
            let mut end = 0;
            for (offset, len) in held {
                if offset > end {
                    punch(&file, end, offset - end).map_err(|e| io(&path, e))?;
                }
                end = end.max(offset + len);
            }
            let size = file.metadata().map_err(|e| io(&path, e))?.len();
            if size > end {
                file.set_len(end).map_err(|e| io(&path, e))?;
            }
        }
        Ok(())
    }

    fn register(state: &mut State, block: u64, tier: usize, offset: u64, len: u64, own: bool) {
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
    fn path_of(&self, block: u64, m: &BlockMeta) -> PathBuf {
        let dir = &self.tiers[m.tier].dir;
        if m.own_file {
            own_file_path(dir, block)
        } else {
            data_path(dir, block::file_of(block))
        }
    }

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

    fn drop_block(&self, st: &mut State, block: u64) {
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

    /// Where a test's block starts in its data file: these tests' blocks
    /// all belong to inode 0, so each gets a range of its own.
    fn at(block: u64) -> u64 {
        block * 4096
    }

    /// A leased block's bytes, read the way a short-circuit reader does.
    fn bytes(lease: &Lease) -> Vec<u8> {
        let mut out = vec![0; lease.len as usize];
        std::fs::File::open(&lease.path)
            .unwrap()
            .read_exact_at(&mut out, lease.offset)
            .unwrap();
        out
    }

    /// Bytes a file takes on disk (a punched range takes none).
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// Block `index` of inode `inode`, as the master numbers them.
    fn block(inode: u64, index: u64) -> u64 {
        block::block_id(inode, index)
    }

    const MIB: u64 = 1 << 20;

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
            assert_eq!(s.put(7, at(7), b"hello", false).unwrap(), "MEM");
            std::fs::write(dir.path().join("mem/8.123.tmp"), b"half").unwrap();
        }
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
        let lease = s.lease(7).expect("block 7 kept");
        assert_eq!(bytes(&lease), b"hello");
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
            assert_eq!(s.put(b, at(b), &[b as u8; 100], false).unwrap(), "MEM");
        }
        drop(s.lease(0)); // block 0 becomes the most recently used
        // 900 used = high watermark; the next block makes MEM evict to 500.
        assert_eq!(s.put(9, at(9), &[9; 100], false).unwrap(), "MEM");
        let usage = s.usage();
        assert!(usage[0].2 <= 500 + 100, "MEM at {}", usage[0].2);
        let lease1 = s.lease(1).unwrap();
        assert_eq!(
            lease1.tier, "SSD",
            "the least recently used block was demoted"
        );
        assert_eq!(bytes(&lease1), vec![1u8; 100]);
        assert_eq!(s.lease(0).unwrap().tier, "MEM", "recently used stays");
        assert!(s.take_removed().is_empty(), "demoted, not dropped");
    }

    #[test]
    fn pinned_leased_and_unpersisted_blocks_are_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            BlockStore::open(mem_tier(dir.path(), 1000, 0.9, 0.3), EvictionPolicy::Lru).unwrap();
        s.put(1, at(1), &[1; 200], false).unwrap();
        s.put(2, at(2), &[2; 200], false).unwrap();
        s.put(3, at(3), &[3; 200], true).unwrap();
        s.put(4, at(4), &[4; 200], false).unwrap();
        s.set_pinned(1, true).unwrap();
        let held = s.lease(2).unwrap();
        // Needs room: only block 4 may go.
        s.put(5, at(5), &[5; 200], false).unwrap();
        assert!(s.lease(1).is_some() && s.lease(3).is_some());
        assert!(s.lease(4).is_none(), "the only evictable block went");
        assert_eq!(s.take_removed(), vec![4]);
        drop(held);
        // Everything left is pinned, unpersisted or needed: no room.
        s.set_persisted(3).unwrap();
        assert!(
            s.put(6, at(6), &[6; 300], false).is_ok(),
            "persisted and unleased blocks can now go"
        );
        assert!(matches!(
            s.put(7, at(7), &[7; 2000], false),
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
            s.put(0, at(0), &[0; 100], false).unwrap();
            for _ in 0..20 {
                drop(s.lease(0));
            }
            // A scan: each new block read once, pushing the store past full.
            for b in 1..=10 {
                s.put(b, at(b), &[1; 100], false).unwrap();
                drop(s.lease(b));
            }
            assert_eq!(s.lease(0).is_some(), hot_survives, "{policy:?}");
        }
    }

    #[test]
    fn an_abandoned_block_write_leaves_no_file_and_no_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
        let mut w = s.begin(5, at(5), 600, false).unwrap();
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
        let mut w = s.begin(6, at(6), 600, false).unwrap();
        w.write(&[6; 250]).unwrap();
        assert_eq!(w.commit().unwrap(), "MEM");
        assert_eq!(s.usage()[0].2, 250);
        assert_eq!(s.lease(6).unwrap().len, 250);
    }

    #[test]
    fn a_files_blocks_share_one_data_file_that_a_file_lease_hands_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            BlockStore::open(mem_tier(dir.path(), 4 * MIB, 1.0, 0.5), EvictionPolicy::Lru).unwrap();
        let file: Vec<u8> = (0..(2 * MIB + 5)).map(|i| (i % 251) as u8).collect();
        let parts = [(0, 0, MIB), (1, MIB, MIB), (2, 2 * MIB, 5)];
        let blocks: Vec<_> = parts.iter().map(|&(i, o, l)| (block(9, i), o, l)).collect();
        // Written out of order, as concurrent loads do.
        for &(b, o, l) in blocks.iter().rev() {
            s.put(b, o, &file[o as usize..(o + l) as usize], false)
                .unwrap();
        }
        let data = dir.path().join("mem/9.data");
        assert_eq!(
            std::fs::read(&data).unwrap(),
            file,
            "the file's own bytes, in place"
        );
        let whole = s
            .lease_file(&blocks, file.len() as u64)
            .expect("every block here");
        assert_eq!(whole.path, data);
        assert_eq!(whole.leases.len(), 3);
        for l in &whole.leases {
            assert_eq!(
                bytes(l),
                file[l.offset as usize..(l.offset + l.len) as usize]
            );
        }
        // While leased, no block of it is evicted to make room.
        let other = block(10, 0);
        assert!(matches!(
            s.put(other, 0, &vec![1; (2 * MIB) as usize], false),
            Err(StoreError::NoSpace { .. })
        ));
        drop(whole);
        // Wrong length, wrong offsets, a missing block: no lease at all.
        assert!(s.lease_file(&blocks, file.len() as u64 + 1).is_none());
        assert!(
            s.lease_file(&blocks[1..], file.len() as u64 - MIB)
                .is_none()
        );
        // Unleased, they make room (LRU: the file's blocks go), and a file
        // missing a block is not handed out.
        s.put(other, 0, &vec![1; (2 * MIB) as usize], false)
            .unwrap();
        assert!(!s.take_removed().is_empty());
        assert!(s.lease_file(&blocks, file.len() as u64).is_none());
        assert!(
            s.state
                .lock()
                .unwrap()
                .blocks
                .values()
                .all(|m| m.leases == 0),
            "nothing stays leased"
        );
    }

    #[test]
    fn a_dropped_block_gives_its_range_back_and_the_last_takes_the_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            BlockStore::open(tiers(dir.path(), 64 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
        let data = dir.path().join("mem/3.data");
        for i in 0..4 {
            s.put(
                block(3, i),
                i * 4 * MIB,
                &vec![i as u8 + 1; (4 * MIB) as usize],
                false,
            )
            .unwrap();
        }
        let full = allocated(&data);
        assert!(full >= 16 * MIB, "{full}");
        s.remove(block(3, 1));
        s.free(block(3, 2));
        assert!(allocated(&data) <= full - 8 * MIB, "two ranges punched out");
        assert_eq!(
            bytes(&s.lease(block(3, 3)).unwrap()),
            vec![4; (4 * MIB) as usize]
        );
        assert_eq!(s.usage()[0].2, 8 * MIB);
        s.remove(block(3, 0));
        s.remove(block(3, 3));
        assert!(!data.exists(), "the data file goes with its last block");
        let mut removed = s.take_removed();
        removed.sort();
        assert_eq!(removed, (0..4).map(|i| block(3, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_block_half_written_when_the_worker_died_is_punched_out_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("mem/5.data");
        {
            let s = BlockStore::open(tiers(dir.path(), 64 * MIB, 64 * MIB), EvictionPolicy::Lru)
                .unwrap();
            s.put(block(5, 0), 0, &vec![1; MIB as usize], false)
                .unwrap();
            // Blocks 1 and 2 die half written: block 2 past the end, which
            // grows the file.
            for i in [1, 2] {
                let mut w = s.begin(block(5, i), i * MIB, MIB, false).unwrap();
                w.write(&vec![9; (MIB / 2) as usize]).unwrap();
                std::mem::forget(w);
            }
            // A data file no marker names: its blocks all died half-written.
            std::fs::write(dir.path().join("mem/6.data"), b"junk").unwrap();
            assert!(std::fs::metadata(&data).unwrap().len() > MIB);
        }
        let s =
            BlockStore::open(tiers(dir.path(), 64 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
        assert!(s.lease(block(5, 1)).is_none() && s.lease(block(5, 2)).is_none());
        assert_eq!(bytes(&s.lease(block(5, 0)).unwrap()), vec![1; MIB as usize]);
        assert_eq!(
            std::fs::metadata(&data).unwrap().len(),
            MIB,
            "cut back to block 0"
        );
        assert!(allocated(&data) <= MIB + 64 * 1024, "{}", allocated(&data));
        assert!(!dir.path().join("mem/6.data").exists());
        assert_eq!(s.usage()[0].2, MIB);
        // The half-written blocks can be written again.
        s.put(block(5, 1), MIB, &vec![2; MIB as usize], false)
            .unwrap();
        assert_eq!(bytes(&s.lease(block(5, 1)).unwrap()), vec![2; MIB as usize]);
    }

    #[test]
    fn a_block_cached_or_being_written_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
        let w = s.begin(1, 0, 10, false).unwrap();
        assert!(matches!(
            s.begin(1, 0, 10, false),
            Err(StoreError::Exists(1))
        ));
        drop(w);
        s.put(1, 0, b"0123456789", false).unwrap();
        assert!(matches!(
            s.put(1, 0, b"xxxxxxxxxx", false),
            Err(StoreError::Exists(1))
        ));
        assert_eq!(bytes(&s.lease(1).unwrap()), b"0123456789");
    }

    #[test]
    fn demotion_moves_a_block_to_the_same_place_in_the_lower_tiers_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            BlockStore::open(tiers(dir.path(), 3 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
        s.put(block(4, 1), MIB, &vec![7; MIB as usize], false)
            .unwrap();
        s.put(block(4, 0), 0, &vec![6; MIB as usize], false)
            .unwrap();
        // Over MEM's high watermark: block 1 (least recent) goes to SSD.
        s.put(block(8, 0), 0, &vec![8; MIB as usize], false)
            .unwrap();
        let moved = s.lease(block(4, 1)).unwrap();
        assert_eq!((moved.tier.as_str(), moved.offset), ("SSD", MIB));
        assert_eq!(moved.path, dir.path().join("ssd/4.data"));
        assert_eq!(bytes(&moved), vec![7; MIB as usize]);
        drop(moved);
        // Split over two tiers, the file cannot be handed out whole.
        let blocks = [(block(4, 0), 0, MIB), (block(4, 1), MIB, MIB)];
        assert!(s.lease_file(&blocks, 2 * MIB).is_none());
        // A restart finds both where they went.
        drop(s);
        let s =
            BlockStore::open(tiers(dir.path(), 3 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
        assert_eq!(s.tier_of(block(4, 1)).as_deref(), Some("SSD"));
        assert_eq!(s.tier_of(block(4, 0)).as_deref(), Some("MEM"));
        assert_eq!(bytes(&s.lease(block(4, 1)).unwrap()), vec![7; MIB as usize]);
    }

    #[test]
    fn block_files_of_the_earlier_layout_are_kept_read_and_evicted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mem")).unwrap();
        let (first, second) = (block(2, 0), block(2, 1));
        std::fs::write(dir.path().join(format!("mem/{first}")), b"kept").unwrap();
        std::fs::write(dir.path().join(format!("mem/{second}")), b"too").unwrap();
        let s = BlockStore::open(tiers(dir.path(), 1000, 1000), EvictionPolicy::Lru).unwrap();
        let lease = s.lease(second).unwrap();
        assert_eq!((lease.offset, bytes(&lease)), (0, b"too".to_vec()));
        drop(lease);
        // A file of one such block is that block's file; a file of two is
        // in no one file.
        assert!(s.lease_file(&[(first, 0, 4)], 4).is_some());
        assert!(s.lease_file(&[(first, 0, 4), (second, 4, 3)], 7).is_none());
        s.remove(second);
        assert!(!dir.path().join(format!("mem/{second}")).exists());
        assert_eq!(s.usage()[0].2, 4);
    }
}
