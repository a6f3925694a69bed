//! The store's behaviour on real tier directories.

use super::*;
use std::os::unix::fs::FileExt;

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
    let s = BlockStore::open(mem_tier(dir.path(), 1000, 0.9, 0.3), EvictionPolicy::Lru).unwrap();
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
    let s = BlockStore::open(mem_tier(dir.path(), 4 * MIB, 1.0, 0.5), EvictionPolicy::Lru).unwrap();
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
    let s = BlockStore::open(tiers(dir.path(), 64 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
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
        let s =
            BlockStore::open(tiers(dir.path(), 64 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
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
    let s = BlockStore::open(tiers(dir.path(), 64 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
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
    let s = BlockStore::open(tiers(dir.path(), 3 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
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
    let s = BlockStore::open(tiers(dir.path(), 3 * MIB, 64 * MIB), EvictionPolicy::Lru).unwrap();
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
