//! The leader's soft state about workers: who is alive, their capacity, and
//! which blocks each holds. None of it is journaled: workers report it when
//! they register and in heartbeats, so a new leader rebuilds it within one
//! heartbeat interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub type WorkerId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerAddr {
    pub host: String,
    pub rpc_port: u32,
    pub data_port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierUsage {
    pub tier: String,
    pub capacity: u64,
    pub used: u64,
    /// Bytes held before eviction starts.
    pub holdable: u64,
}

#[derive(Debug, Clone)]
pub struct WorkerState {
    pub id: WorkerId,
    pub addr: WorkerAddr,
    pub tiers: Vec<TierUsage>,
    pub last_heartbeat: Instant,
    pub block_count: u64,
    /// Leaving: gets no new blocks, still serves what it has.
    pub draining: bool,
    /// The node it runs on.
    pub node: String,
}

/// A worker holding a block, and where it keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub worker: WorkerId,
    pub addr: WorkerAddr,
    pub node: String,
    pub tier: String,
}

/// A worker that stopped answering, remembered until a worker registers
/// from its node (or its host) again: what the status shows as lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWorker {
    pub id: WorkerId,
    pub host: String,
    pub node: String,
    pub capacity: u64,
    pub at: Instant,
}

/// Lost workers remembered at most (the oldest are forgotten first).
const LOST_KEPT: usize = 64;

/// A draining worker and what only it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draining {
    pub id: WorkerId,
    pub host: String,
    pub block_count: u64,
    pub sole_blocks: u64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: WorkerId,
    workers: BTreeMap<WorkerId, WorkerState>,
    /// block -> (worker -> tier)
    locations: HashMap<u64, BTreeMap<WorkerId, String>>,
    hits: u64,
    misses: u64,
    lost: u64,
    /// Blocks each worker is to drop, handed over with its next heartbeat.
    pending_free: HashMap<WorkerId, Vec<u64>>,
    /// Each worker's pinned blocks, and whether it has been told.
    pinned: HashMap<WorkerId, (BTreeSet<u64>, bool)>,
    /// Hosts whose workers are leaving (also when they register again).
    draining: BTreeSet<String>,
    /// Workers lost and not back, oldest first.
    lost_workers: Vec<LostWorker>,
}

/// Registry of live workers and block locations.
#[derive(Debug)]
pub struct WorkerRegistry {
    timeout: Duration,
    inner: Mutex<Inner>,
}

/// What a heartbeat tells the worker to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub reregister: bool,
    pub free_blocks: Vec<u64>,
    /// The worker's pinned blocks, when they changed since it was last told.
    pub pinned_blocks: Option<Vec<u64>>,
}

impl WorkerRegistry {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock")
    }

    /// Registers a worker with its full block report. A worker that
    /// registers again (restart, new leader) keeps its id when it is free.
    pub fn register(
        &self,
        addr: WorkerAddr,
        node: String,
        tiers: Vec<TierUsage>,
        blocks: Vec<(u64, String)>,
        previous_id: Option<WorkerId>,
    ) -> WorkerId {
        let mut inner = self.lock();
        let draining = inner.draining.contains(&addr.host);
        // A worker on a lost worker's node (or at its address) is that
        // capacity back.
        inner.lost_workers.retain(|l| {
            let back = if node.is_empty() || l.node.is_empty() {
                l.host == addr.host
            } else {
                l.node == node
            };
            if back {
                tracing::info!(worker = l.id, node = %l.node, host = %l.host, "lost worker's node is back");
            }
            !back
        });
        // The same address re-registering replaces its old entry.
        let stale: Vec<WorkerId> = inner
            .workers
            .values()
            .filter(|w| w.addr == addr)
            .map(|w| w.id)
            .collect();
        for id in stale {
            Self::drop_worker(&mut inner, id);
        }
        let id = match previous_id {
            Some(p) if p > 0 && !inner.workers.contains_key(&p) => p,
            _ => inner.next_id,
        };
        inner.next_id = inner.next_id.max(id + 1);
        let block_count = blocks.len() as u64;
        for (block, tier) in blocks {
            inner.locations.entry(block).or_default().insert(id, tier);
        }
        inner.workers.insert(
            id,
            WorkerState {
                id,
                addr,
                tiers,
                last_heartbeat: Instant::now(),
                block_count,
                draining,
                node,
            },
        );
        id
    }

    /// Marks the workers at `hosts` as draining and every other as not;
    /// returns each draining worker with the blocks only draining workers
    /// hold.
    pub fn set_draining(&self, hosts: BTreeSet<String>) -> Vec<Draining> {
        let mut inner = self.lock();
        for w in inner.workers.values_mut() {
            w.draining = hosts.contains(&w.addr.host);
        }
        inner.draining = hosts;
        let draining: BTreeSet<WorkerId> = inner
            .workers
            .values()
            .filter(|w| w.draining)
            .map(|w| w.id)
            .collect();
        let mut sole: HashMap<WorkerId, u64> = HashMap::new();
        for holders in inner.locations.values() {
            if holders.keys().all(|id| draining.contains(id)) {
                for id in holders.keys() {
                    *sole.entry(*id).or_default() += 1;
                }
            }
        }
        inner
            .workers
            .values()
            .filter(|w| w.draining)
            .map(|w| Draining {
                id: w.id,
                host: w.addr.host.clone(),
                block_count: w.block_count,
                sole_blocks: sole.get(&w.id).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Workers that take new blocks: live and not draining.
    pub fn serving(&self) -> Vec<WorkerState> {
        self.workers().into_iter().filter(|w| !w.draining).collect()
    }

    pub fn heartbeat(
        &self,
        id: WorkerId,
        tiers: Vec<TierUsage>,
        added: Vec<(u64, String)>,
        removed: Vec<u64>,
        hits: u64,
        misses: u64,
    ) -> HeartbeatAnswer {
        let mut inner = self.lock();
        if !inner.workers.contains_key(&id) {
            return HeartbeatAnswer {
                reregister: true,
                ..HeartbeatAnswer::default()
            };
        }
        let (added_n, removed_n) = (added.len() as u64, removed.len() as u64);
        for (block, tier) in added {
            inner.locations.entry(block).or_default().insert(id, tier);
        }
        for block in removed {
            if let Some(holders) = inner.locations.get_mut(&block) {
                holders.remove(&id);
                if holders.is_empty() {
                    inner.locations.remove(&block);
                }
            }
        }
        inner.hits += hits;
        inner.misses += misses;
        let w = inner.workers.get_mut(&id).expect("checked above");
        w.tiers = tiers;
        w.last_heartbeat = Instant::now();
        w.block_count = (w.block_count + added_n).saturating_sub(removed_n);
        let pinned_blocks = inner.pinned.get_mut(&id).and_then(|(set, told)| {
            (!*told).then(|| {
                *told = true;
                set.iter().copied().collect()
            })
        });
        HeartbeatAnswer {
            reregister: false,
            free_blocks: inner.pending_free.remove(&id).unwrap_or_default(),
            pinned_blocks,
        }
    }

    /// Replaces the set of pinned blocks (blocks of pinned files); each
    /// worker whose share changed hears it with its next heartbeat.
    pub fn set_pinned_blocks(&self, blocks: &BTreeSet<u64>) {
        let mut inner = self.lock();
        let mut per_worker: HashMap<WorkerId, BTreeSet<u64>> = inner
            .workers
            .keys()
            .map(|id| (*id, BTreeSet::new()))
            .collect();
        for block in blocks {
            if let Some(holders) = inner.locations.get(block) {
                for w in holders.keys() {
                    per_worker.entry(*w).or_default().insert(*block);
                }
            }
        }
        for (w, set) in per_worker {
            let entry = inner
                .pinned
                .entry(w)
                .or_insert_with(|| (BTreeSet::new(), true));
            if entry.0 != set {
                *entry = (set, false);
            }
        }
    }

    /// Tells every holder of each block to drop it on its next heartbeat;
    /// returns how many copies that is.
    pub fn schedule_free(&self, blocks: impl IntoIterator<Item = u64>) -> u64 {
        let mut inner = self.lock();
        let mut copies = 0;
        for block in blocks {
            let holders: Vec<WorkerId> = inner
                .locations
                .get(&block)
                .map(|h| h.keys().copied().collect())
                .unwrap_or_default();
            for w in holders {
                let pending = inner.pending_free.entry(w).or_default();
                if !pending.contains(&block) {
                    pending.push(block);
                    copies += 1;
                }
            }
        }
        copies
    }

    /// Records a block a worker just cached (`len` bytes in `tier`): the
    /// tier's usage grows at once, so space-aware placement does not wait
    /// for the next heartbeat to see it.
    pub fn commit_block(&self, id: WorkerId, block: u64, len: u64, tier: String) -> bool {
        let mut inner = self.lock();
        if !inner.workers.contains_key(&id) {
            return false;
        }
        let new = inner
            .locations
            .entry(block)
            .or_default()
            .insert(id, tier.clone())
            .is_none();
        if let Some(w) = inner.workers.get_mut(&id)
            && new
        {
            w.block_count += 1;
            if let Some(t) = w.tiers.iter_mut().find(|t| t.tier == tier) {
                t.used = t.used.saturating_add(len);
            }
        }
        true
    }

    /// Bytes a worker can still take before it starts evicting.
    pub fn room(&self, id: WorkerId) -> u64 {
        self.lock()
            .workers
            .get(&id)
            .map(|w| {
                w.tiers
                    .iter()
                    .map(|t| t.holdable.saturating_sub(t.used))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// A worker shutting down: forgotten at once with its blocks, not
    /// after the heartbeat timeout, so clients stop being sent to it.
    pub fn leave(&self, id: WorkerId) {
        let mut inner = self.lock();
        if let Some(w) = inner.workers.get(&id) {
            tracing::info!(worker = id, host = %w.addr.host, node = %w.node, "worker left");
            Self::drop_worker(&mut inner, id);
        }
    }

    fn drop_worker(inner: &mut Inner, id: WorkerId) {
        inner.workers.remove(&id);
        inner.pending_free.remove(&id);
        inner.pinned.remove(&id);
        inner.locations.retain(|_, holders| {
            holders.remove(&id);
            !holders.is_empty()
        });
    }

    /// Marks workers silent past the timeout as lost and forgets their
    /// blocks; returns the ids that were dropped.
    pub fn expire(&self) -> Vec<WorkerId> {
        let mut inner = self.lock();
        let now = Instant::now();
        let dead: Vec<WorkerId> = inner
            .workers
            .values()
            .filter(|w| now.duration_since(w.last_heartbeat) > self.timeout)
            .map(|w| w.id)
            .collect();
        for id in &dead {
            if let Some(w) = inner.workers.get(id) {
                tracing::warn!(
                    worker = id,
                    node = %w.node,
                    host = %w.addr.host,
                    "worker lost: no heartbeat within {:?}",
                    self.timeout
                );
                let lost = LostWorker {
                    id: *id,
                    host: w.addr.host.clone(),
                    node: w.node.clone(),
                    capacity: w.tiers.iter().map(|t| t.capacity).sum(),
                    at: now,
                };
                inner.lost_workers.push(lost);
                let over = inner.lost_workers.len().saturating_sub(LOST_KEPT);
                inner.lost_workers.drain(..over);
            }
            Self::drop_worker(&mut inner, *id);
            inner.lost += 1;
        }
        dead
    }

    /// Workers lost whose node has not brought a worker back.
    pub fn lost_workers(&self) -> Vec<LostWorker> {
        self.lock().lost_workers.clone()
    }

    /// Workers holding `block`, with their addresses, nodes and tiers.
    pub fn locations(&self, block: u64) -> Vec<Location> {
        let inner = self.lock();
        inner
            .locations
            .get(&block)
            .map(|holders| {
                holders
                    .iter()
                    .filter_map(|(id, tier)| {
                        inner.workers.get(id).map(|w| Location {
                            worker: *id,
                            addr: w.addr.clone(),
                            node: w.node.clone(),
                            tier: tier.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_cached(&self, block: u64) -> bool {
        self.lock().locations.contains_key(&block)
    }

    /// Every block some worker holds.
    pub fn cached_blocks(&self) -> Vec<u64> {
        self.lock().locations.keys().copied().collect()
    }

    pub fn workers(&self) -> Vec<WorkerState> {
        self.lock().workers.values().cloned().collect()
    }

    /// Cache hit ratio reported by workers since this leader took over.
    pub fn hit_ratio(&self) -> f64 {
        let inner = self.lock();
        let total = inner.hits + inner.misses;
        if total == 0 {
            0.0
        } else {
            inner.hits as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u32) -> WorkerAddr {
        WorkerAddr {
            host: "127.0.0.1".into(),
            rpc_port: port,
            data_port: port + 1,
        }
    }

    #[test]
    fn a_worker_that_leaves_is_forgotten_at_once_with_its_blocks() {
        let r = WorkerRegistry::new(Duration::from_secs(10));
        let a = r.register(addr(1), "n1".into(), vec![], vec![(10, "MEM".into())], None);
        let b = r.register(addr(3), "n2".into(), vec![], vec![(10, "MEM".into())], None);
        assert_eq!(r.locations(10)[0].node, "n1");
        r.leave(a);
        assert_eq!(
            r.locations(10)
                .iter()
                .map(|l| (l.worker, l.node.as_str()))
                .collect::<Vec<_>>(),
            vec![(b, "n2")]
        );
        assert_eq!(r.workers().len(), 1);
        // Its next heartbeat (a restart under the same id) registers anew.
        assert!(r.heartbeat(a, vec![], vec![], vec![], 0, 0).reregister);
    }

    #[test]
    fn locations_follow_reports_and_heartbeats() {
        let r = WorkerRegistry::new(Duration::from_secs(10));
        let a = r.register(addr(1), "n".into(), vec![], vec![(10, "MEM".into())], None);
        let b = r.register(
            addr(3),
            "n".into(),
            vec![],
            vec![(10, "SSD".into()), (11, "MEM".into())],
            None,
        );
        assert_ne!(a, b);
        assert_eq!(r.locations(10).len(), 2);
        r.heartbeat(a, vec![], vec![(12, "MEM".into())], vec![10], 3, 1);
        assert_eq!(
            r.locations(10).iter().map(|l| l.worker).collect::<Vec<_>>(),
            vec![b]
        );
        assert_eq!(r.locations(12)[0].worker, a);
        assert_eq!(r.hit_ratio(), 0.75);
        assert!(
            r.heartbeat(99, vec![], vec![], vec![], 0, 0).reregister,
            "unknown workers re-register"
        );
    }

    #[test]
    fn draining_workers_take_no_new_blocks_and_report_what_only_they_hold() {
        let r = WorkerRegistry::new(Duration::from_secs(10));
        let host = |h: &str| WorkerAddr {
            host: h.into(),
            rpc_port: 1,
            data_port: 2,
        };
        let a = r.register(
            host("10.0.0.1"),
            "n".into(),
            vec![],
            vec![(1, "MEM".into()), (2, "MEM".into())],
            None,
        );
        let b = r.register(
            host("10.0.0.2"),
            "n".into(),
            vec![],
            vec![(2, "MEM".into()), (3, "MEM".into())],
            None,
        );
        let d = r.set_draining(["10.0.0.1".to_owned()].into());
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].id, d[0].block_count, d[0].sole_blocks),
            (a, 2, 1),
            "block 1 is only on a"
        );
        assert_eq!(
            r.serving().iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![b]
        );
        // A draining worker that registers again is still draining.
        let a2 = r.register(
            host("10.0.0.1"),
            "n".into(),
            vec![],
            vec![(1, "MEM".into())],
            Some(a),
        );
        assert_eq!(a2, a);
        assert_eq!(r.serving().len(), 1);
        assert!(r.set_draining(Default::default()).is_empty());
        assert_eq!(r.serving().len(), 2);
    }

    #[test]
    fn silent_workers_are_lost_with_their_blocks() {
        let r = WorkerRegistry::new(Duration::from_millis(20));
        let a = r.register(addr(1), "n".into(), vec![], vec![(10, "MEM".into())], None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(r.expire(), vec![a]);
        assert!(r.locations(10).is_empty());
        assert!(!r.is_cached(10));
        let lost = r.lost_workers();
        assert_eq!((lost.len(), lost[0].id, lost[0].node.as_str()), (1, a, "n"));
        // A worker that leaves is not lost; one registering on the lost
        // worker's node brings it back.
        let b = r.register(addr(5), "m".into(), vec![], vec![], None);
        r.leave(b);
        assert_eq!(r.lost_workers().len(), 1);
        r.register(addr(7), "n".into(), vec![], vec![(10, "MEM".into())], None);
        assert!(r.lost_workers().is_empty());
        assert!(r.is_cached(10), "its blocks count again");
    }

    #[test]
    fn re_registration_keeps_the_id_and_replaces_the_report() {
        let r = WorkerRegistry::new(Duration::from_secs(10));
        let a = r.register(addr(1), "n".into(), vec![], vec![(10, "MEM".into())], None);
        let again = r.register(
            addr(1),
            "n".into(),
            vec![],
            vec![(11, "MEM".into())],
            Some(a),
        );
        assert_eq!(again, a);
        assert!(r.locations(10).is_empty());
        assert_eq!(r.locations(11).len(), 1);
        assert_eq!(r.workers().len(), 1);
    }
}
