//! `weir admin report`: the cluster as the leader's admin report shows it.

use crate::cli::CliError;
use crate::proto::master as pb;
use serde_json::json;
use weir_api::MasterClient;

pub async fn report(client: &MasterClient, as_json: bool) -> Result<(), CliError> {
    let info = client
        .call(|mut c| async move { c.get_cluster_info(pb::Empty {}).await })
        .await?;
    if as_json {
        let v = json!({
            "masters": info.masters.iter().map(|m| json!({"id": m.id, "address": m.address, "role": m.role})).collect::<Vec<_>>(),
            "workers": info.workers.iter().map(|w| {
                let a = w.address.clone().unwrap_or_default();
                json!({"id": a.worker_id, "host": a.host, "node": w.node, "rpcPort": a.rpc_port, "blocks": w.block_count,
                       "tiers": w.tiers.iter().map(|t| json!({"tier": t.tier, "capacity": t.capacity_bytes, "used": t.used_bytes})).collect::<Vec<_>>()})
            }).collect::<Vec<_>>(),
            "capacityBytes": info.capacity_bytes, "usedBytes": info.used_bytes,
            "inodes": info.inode_count, "hitRatio": info.hit_ratio,
            "lostWorkers": info.lost_workers.iter().map(|l| json!({"id": l.worker_id, "host": l.host, "node": l.node, "capacityBytes": l.capacity_bytes, "lostMsAgo": l.lost_ms_ago})).collect::<Vec<_>>(),
            "mounts": info.mounts.iter().map(|m| json!({"path": m.path, "ufsUri": m.ufs_uri, "cachedBytes": m.cached_bytes, "ufsTotalBytes": m.ufs_total_bytes, "files": m.file_count, "countComplete": m.count_complete})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("masters:");
    for m in &info.masters {
        println!("  {:>3} {:<24} {}", m.id, m.address, m.role);
    }
    println!(
        "workers: {}  capacity {} B  used {} B  hit ratio {:.3}",
        info.workers.len(),
        info.capacity_bytes,
        info.used_bytes,
        info.hit_ratio
    );
    for w in &info.workers {
        let a = w.address.clone().unwrap_or_default();
        let tiers: Vec<String> = w
            .tiers
            .iter()
            .map(|t| format!("{} {}/{} B", t.tier, t.used_bytes, t.capacity_bytes))
            .collect();
        println!(
            "  {:>3} on {} at {}:{} (data {}) blocks {}  {}{}",
            a.worker_id,
            w.node,
            a.host,
            a.rpc_port,
            a.data_port,
            w.block_count,
            tiers.join(", "),
            if w.lost { "  LOST" } else { "" }
        );
    }
    for l in &info.lost_workers {
        println!(
            "  {:>3} on {} at {} LOST {} s ago ({} B of capacity)",
            l.worker_id,
            l.node,
            l.host,
            l.lost_ms_ago / 1000,
            l.capacity_bytes
        );
    }
    println!("inodes: {}", info.inode_count);
    println!("mounts:");
    for m in &info.mounts {
        let pct = if m.ufs_total_bytes == 0 {
            0.0
        } else {
            m.cached_bytes as f64 * 100.0 / m.ufs_total_bytes as f64
        };
        println!(
            "  {} -> {}  cached {} of {} B ({pct:.1}%), {} files{}",
            m.path,
            m.ufs_uri,
            m.cached_bytes,
            m.ufs_total_bytes,
            m.file_count,
            if m.count_complete { "" } else { " (counting)" }
        );
    }
    Ok(())
}
