//! Where a tier keeps its blocks on disk: one sparse data file per file,
//! a marker per block, and the earlier layout's one file per block; and
//! the scan that rebuilds a tier's block list after a restart, giving back
//! every byte no marker covers.

use super::{BlockStore, State, StoreResult, TierConfig, io};
use crate::block;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

pub(super) fn data_path(dir: &Path, inode: u64) -> PathBuf {
    dir.join(format!("{inode}.data"))
}

pub(super) fn marker_path(dir: &Path, block: u64, offset: u64, len: u64) -> PathBuf {
    dir.join(format!("{block}.{offset}.{len}.block"))
}

/// A block file of the earlier layout.
pub(super) fn own_file_path(dir: &Path, block: u64) -> PathBuf {
    dir.join(block.to_string())
}

pub(super) fn parse_marker(name: &str) -> Option<(u64, u64, u64)> {
    let mut parts = name.strip_suffix(".block")?.split('.');
    let block = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let len = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((block, offset, len))
}

/// Gives a range of a data file back to the file system.
pub(super) fn punch(file: &fs::File, offset: u64, len: u64) -> std::io::Result<()> {
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

pub(super) fn punch_path(path: &Path, offset: u64, len: u64) {
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

pub(super) fn open_data_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl BlockStore {
    pub(super) fn scan_tier(state: &mut State, i: usize, t: &TierConfig) -> StoreResult<()> {
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
}
