//! The ports a runtime's pods listen on. On the pod network every pod has
//! a port space of its own and the defaults serve every runtime. On the
//! host's network two runtimes whose pods share a node would fight over
//! them (a known pain of host-network caches), so each such runtime gets a
//! block of ports of its own from [`HOST_PORTS`], chosen once by the
//! operator, kept in the runtime's status, and never one another runtime
//! holds.

use crate::names::{FUSE_METRICS_PORT, MASTER_PORT, WORKER_DATA_PORT, WORKER_HTTP_PORT};
use std::collections::BTreeSet;

/// Where host-network runtimes' blocks lie: clear of the defaults and of
/// the usual node ports (30000-32767).
pub const HOST_PORTS: std::ops::Range<i32> = 20000..30000;
/// Ports in one runtime's block.
const BLOCK: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub master: i32,
    pub worker_data: i32,
    pub worker_http: i32,
    pub fuse_metrics: i32,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            master: MASTER_PORT,
            worker_data: WORKER_DATA_PORT,
            worker_http: WORKER_HTTP_PORT,
            fuse_metrics: FUSE_METRICS_PORT,
        }
    }
}

impl Ports {
    /// The block starting at `base`.
    pub fn from_base(base: i32) -> Self {
        Self {
            master: base,
            worker_data: base + 1,
            worker_http: base + 2,
            fuse_metrics: base + 3,
        }
    }
}

/// A free block's first port for the runtime `key` (`namespace/name`),
/// given the bases other runtimes hold: the block its name hashes to, or
/// the next free one after it. `None` when every block is taken.
pub fn choose_base(key: &str, taken: &BTreeSet<i32>) -> Option<i32> {
    use sha2::Digest;
    let blocks = (HOST_PORTS.end - HOST_PORTS.start) / BLOCK;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let start = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) as i32 & i32::MAX;
    (0..blocks)
        .map(|i| HOST_PORTS.start + ((start + i) % blocks) * BLOCK)
        .find(|base| !taken.contains(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_stable_apart_and_inside_the_range() {
        let a = choose_base("team/a", &BTreeSet::new()).unwrap();
        assert_eq!(choose_base("team/a", &BTreeSet::new()), Some(a), "stable");
        assert!(HOST_PORTS.contains(&a) && HOST_PORTS.contains(&(a + BLOCK - 1)));
        assert_eq!((a - HOST_PORTS.start) % BLOCK, 0);
        // Taken by another runtime: the next free block.
        let b = choose_base("team/a", &[a].into()).unwrap();
        assert_ne!(a, b);
        assert!(b == a + BLOCK || b == HOST_PORTS.start, "{a} then {b}");
        let p = Ports::from_base(b);
        let all = [p.master, p.worker_data, p.worker_http, p.fuse_metrics];
        assert!(all.iter().all(|port| !Ports::from_base(a).master.eq(port)));
        // Every block taken: none.
        let full: BTreeSet<i32> = HOST_PORTS.step_by(BLOCK as usize).collect();
        assert_eq!(choose_base("team/c", &full), None);
    }
}
