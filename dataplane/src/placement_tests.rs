//! The promise of [`crate::block`]: a client's cache miss and a load job
//! pick the same worker for a block, through their own code paths, for
//! any block and any set of workers with any room.

use crate::client::workers::{LiveWorker, pick_miss};
use crate::master::jobs::runner::first_copy;
use crate::master::workers::{TierUsage, WorkerAddr, WorkerState};
use std::time::Instant;

/// splitmix64, for reproducible worker sets.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn a_client_miss_and_a_load_job_pick_the_same_worker() {
    let mut seed = 7;
    let len = 64 << 20;
    let mut moved_by_room = 0;
    for round in 0..500 {
        let count = 1 + (next(&mut seed) % 8) as usize;
        // (id, room): ids as the registry hands them out, some workers full.
        let workers: Vec<(u64, u64)> = (0..count)
            .map(|i| {
                let room = if next(&mut seed).is_multiple_of(3) {
                    len / 2
                } else {
                    4 * len
                };
                (1 + i as u64 + round, room)
            })
            .collect();
        let registry: Vec<WorkerState> = workers
            .iter()
            .map(|&(id, room)| WorkerState {
                id,
                addr: WorkerAddr {
                    host: format!("10.0.0.{id}"),
                    rpc_port: 1,
                    data_port: 2,
                },
                tiers: vec![TierUsage {
                    tier: "MEM".into(),
                    capacity: room,
                    used: 0,
                    holdable: room,
                }],
                last_heartbeat: Instant::now(),
                block_count: 0,
                draining: false,
                node: format!("node-{id}"),
            })
            .collect();
        let live: Vec<LiveWorker> = workers
            .iter()
            .map(|&(id, room)| LiveWorker {
                id,
                host: format!("10.0.0.{id}"),
                node: format!("n{id}"),
                data_addr: format!("10.0.0.{id}:2"),
                room,
            })
            .collect();
        let candidates: Vec<&WorkerState> = registry.iter().collect();
        for _ in 0..40 {
            let block = next(&mut seed) >> 8;
            let room_of = |id: u64| workers.iter().find(|w| w.0 == id).map_or(0, |w| w.1);
            let by_job = first_copy(block, len, &candidates, room_of).map(|w| w.id);
            let by_client = pick_miss(block, len, &live, |_| false).map(|w| w.id);
            assert_eq!(by_job, by_client, "block {block} over {workers:?}");
            let unconstrained = first_copy(block, len, &candidates, |_| u64::MAX).map(|w| w.id);
            moved_by_room += usize::from(unconstrained != by_job);
        }
    }
    assert!(moved_by_room > 0, "no case exercised a full worker");
}
