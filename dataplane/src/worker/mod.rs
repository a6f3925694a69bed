//! The worker: tiered block storage and (next) the block data path.

pub mod store;
