//! Inode and mount ids. Ids come from counters in the store, advanced by
//! the apply itself, so replaying the log hands out the same ids. A new
//! cluster first moves its counters to a random point far above the ids
//! any earlier incarnation handed out: a group that lost its state must
//! not reuse ids that workers' cached blocks and FUSE clients' inode
//! numbers still carry.

use super::Namespace;
use super::change::{Change, META_INODE_COUNT, META_NEXT_ID, META_NEXT_MOUNT_ID};
use crate::master::command::{FsResult, Reply};
use crate::master::metastore::{ROOT_ID, counter_op, read_counter};

/// Seeded inode ids start at or above this; block ids (inode << 24 | index)
/// keep 2^39 ids of room above the highest seed.
pub const SEEDED_IDS_FLOOR: u64 = 1 << 32;
const SEEDED_IDS_SPAN: u64 = (1 << 39) - (1 << 32);

/// A random seed for a new cluster's inode ids.
pub fn random_id_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    SEEDED_IDS_FLOOR + x % SEEDED_IDS_SPAN
}

impl Namespace {
    /// Whether the id counter has been seeded (see
    /// [`crate::master::command::Command::SeedInodeIds`]).
    pub fn ids_seeded(&self) -> FsResult<bool> {
        Ok(read_counter(self.store.as_ref(), META_NEXT_ID, ROOT_ID + 1)? >= SEEDED_IDS_FLOOR)
    }

    pub fn inode_count(&self) -> FsResult<u64> {
        Ok(read_counter(self.store.as_ref(), META_INODE_COUNT, 1)?)
    }

    pub(super) fn plan_seed(&self, c: &mut Change<'_>, start: u64) -> FsResult<Reply> {
        let start = (start).max(SEEDED_IDS_FLOOR);
        if c.next_id < SEEDED_IDS_FLOOR {
            c.next_id = start;
        }
        // Mount ids too: workers keep under-storages by mount id.
        if read_counter(self.store.as_ref(), META_NEXT_MOUNT_ID, 1)? < SEEDED_IDS_FLOOR {
            c.ops.push(counter_op(META_NEXT_MOUNT_ID, start));
        }
        Ok(Reply::Done)
    }
}
