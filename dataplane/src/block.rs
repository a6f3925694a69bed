//! Blocks: how a file is cut into blocks, how a block is named, and where
//! the first copy of a block goes. Everything that needs one of these (the
//! master's namespace and job runner, the client's miss path, the worker's
//! store) asks here, so they always agree.
//!
//! A block id is `inode id << BLOCK_INDEX_BITS | index`: the file is
//! recovered from the id alone, and a file's blocks sort together.
//!
//! Placement is rendezvous hashing: every (block, worker) pair gets a
//! score, and the first copy of a block goes to the highest-scoring worker
//! with room for it. A client missing a block and a load job fetching it
//! pick the same worker, so the second asker joins the fetch already
//! running instead of reading the under-storage again, and a block's
//! choice moves only when its worker leaves or fills up.

pub type BlockId = u64;
pub type InodeId = u64;
pub type WorkerId = u64;

/// Low bits of a block id that hold the block's index in its file.
pub const BLOCK_INDEX_BITS: u32 = 24;
/// Default block size, as in Alluxio: large blocks keep the block count of
/// big files low while a partial read still caches only what it touches.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 20;

/// The id of block `index` of file `inode`.
pub fn block_id(inode: InodeId, index: u64) -> BlockId {
    (inode << BLOCK_INDEX_BITS) | index
}

/// The file a block belongs to.
pub fn file_of(block: BlockId) -> InodeId {
    block >> BLOCK_INDEX_BITS
}

/// The block's index in its file.
pub fn index_of(block: BlockId) -> u64 {
    block & ((1 << BLOCK_INDEX_BITS) - 1)
}

/// One block of a file: its id and the byte range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub id: BlockId,
    pub offset: u64,
    pub len: u64,
}

/// The blocks of a file of `length` bytes cut at `block_size`.
pub fn blocks_of(inode: InodeId, length: u64, block_size: u64) -> impl Iterator<Item = BlockRange> {
    let size = block_size.max(1);
    (0..length.div_ceil(size)).map(move |i| {
        let offset = i * size;
        BlockRange {
            id: block_id(inode, i),
            offset,
            len: size.min(length - offset),
        }
    })
}

/// Rendezvous score of `worker` for `key` (a block, or a file for the
/// worker a write goes to): the highest score wins.
pub fn score(key: u64, worker: WorkerId) -> u64 {
    // splitmix64 of the pair: spreads scores evenly whatever the ids.
    let mut z = key ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sorts `workers` best first for `key`.
pub fn rank<T>(key: u64, workers: &mut [T], id: impl Fn(&T) -> WorkerId) {
    workers.sort_by_key(|w| std::cmp::Reverse(score(key, id(w))));
}

/// The worker the first copy of `block` (`len` bytes) goes to among
/// `candidates`, given each one's id and the bytes it can still take: the
/// best-ranked one with room, else (every one full) the best-ranked.
pub fn place<T>(
    block: BlockId,
    len: u64,
    candidates: &[T],
    id_and_room: impl Fn(&T) -> (WorkerId, u64),
) -> Option<&T> {
    let best = |with_room: bool| {
        candidates
            .iter()
            .filter(|c| !with_room || id_and_room(c).1 >= len)
            .max_by_key(|c| score(block, id_and_room(c).0))
    };
    best(true).or_else(|| best(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn block_ids_carry_their_file_and_index() {
        let id = block_id(0x12_3456_789a, 7);
        assert_eq!(file_of(id), 0x12_3456_789a);
        assert_eq!(index_of(id), 7);
        let blocks: Vec<BlockRange> = blocks_of(3, 10, 4).collect();
        assert_eq!(
            blocks,
            [
                BlockRange {
                    id: block_id(3, 0),
                    offset: 0,
                    len: 4
                },
                BlockRange {
                    id: block_id(3, 1),
                    offset: 4,
                    len: 4
                },
                BlockRange {
                    id: block_id(3, 2),
                    offset: 8,
                    len: 2
                },
            ]
        );
        assert_eq!(blocks_of(3, 0, 4).count(), 0, "an empty file has no blocks");
    }

    #[test]
    fn placement_is_stable_spread_and_skips_full_workers() {
        let workers = [(1u64, u64::MAX), (2, u64::MAX), (3, u64::MAX)];
        let pick = |block: u64, ws: &[(u64, u64)]| place(block, 1, ws, |w| *w).unwrap().0;
        let mut counts = HashMap::new();
        for block in 0..3000u64 {
            let first = pick(block, &workers);
            *counts.entry(first).or_insert(0) += 1;
            // Losing another worker never moves a block.
            let others: Vec<(u64, u64)> =
                workers.iter().copied().filter(|w| w.0 != first).collect();
            assert_eq!(pick(block, &[(first, u64::MAX), others[0]]), first);
            // A full winner hands the block to the next in rank.
            let mut ranked = workers.to_vec();
            rank(block, &mut ranked, |w| w.0);
            let full: Vec<(u64, u64)> = workers
                .iter()
                .map(|&(id, room)| if id == first { (id, 0) } else { (id, room) })
                .collect();
            assert_eq!(pick(block, &full), ranked[1].0);
            // Every one full: the winner still, as nowhere is better.
            let all_full: Vec<(u64, u64)> = workers.iter().map(|&(id, _)| (id, 0)).collect();
            assert_eq!(pick(block, &all_full), first);
        }
        for (w, n) in counts {
            assert!((800..1200).contains(&n), "worker {w} got {n} of 3000");
        }
        assert!(place(1, 1, &[] as &[(u64, u64)], |w| *w).is_none());
    }
}
