//! `weir fs` calls on the namespace and the mount table, each one master
//! call (a listing streamed page by page).

use crate::cli::CliError;
use crate::proto::master as pb;
use serde_json::json;
use weir_api::{MasterClient, MountSpec};

pub(super) fn info_json(f: &pb::FileInfo) -> serde_json::Value {
    json!({
        "path": f.path, "id": f.id, "isDir": f.is_dir, "length": f.length, "blockSize": f.block_size,
        "completed": f.completed, "mode": format!("{:o}", f.mode), "owner": f.owner, "group": f.group,
        "mtimeMs": f.mtime_ms, "pinned": f.pinned, "ttlMs": f.ttl_ms, "cachedPercent": f.cached_percent,
        "persisted": f.persist == pb::PersistState::Persisted as i32, "ufsPath": f.ufs_path,
        "ufsFingerprint": f.ufs_fingerprint,
    })
}

pub(super) fn info_line(f: &pb::FileInfo) -> String {
    let kind = if f.is_dir { 'd' } else { '-' };
    format!(
        "{kind}{:o} {:>8} {:>8} {:>14} {:>3}% {}",
        f.mode, f.owner, f.group, f.length, f.cached_percent, f.path
    )
}

pub async fn ls(client: &MasterClient, path: String, json: bool) -> Result<(), CliError> {
    let mut cursor = String::new();
    loop {
        let req = pb::ListStatusRequest {
            path: path.clone(),
            start_after: cursor.clone(),
            page_size: 1000,
        };
        let mut stream = client
            .call(|mut c| {
                let r = req.clone();
                async move { c.list_status(r).await }
            })
            .await?;
        let mut got = 0usize;
        while let Some(page) = stream
            .message()
            .await
            .map_err(|s| CliError::Client(s.into()))?
        {
            for e in &page.entries {
                got += 1;
                if json {
                    println!("{}", info_json(e));
                } else {
                    println!("{}", info_line(e));
                }
            }
            cursor = page.cursor;
        }
        // A stream cut by a leader change resumes from its cursor.
        if got == 0 || cursor.is_empty() {
            return Ok(());
        }
        if got < 1000 {
            return Ok(());
        }
    }
}

pub async fn stat(client: &MasterClient, path: String, json: bool) -> Result<(), CliError> {
    let req = pb::PathRequest { path };
    let f = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.get_status(r).await }
        })
        .await?;
    if json {
        println!("{}", info_json(&f))
    } else {
        println!("{}", info_line(&f))
    }
    Ok(())
}

/// Each block of a file and the workers holding it.
pub async fn locate(client: &MasterClient, path: String, json: bool) -> Result<(), CliError> {
    let req = pb::PathRequest { path };
    let info = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.get_file_block_info(r).await }
        })
        .await?;
    let holders = |b: &pb::BlockInfo| -> Vec<(pb::WorkerAddress, String)> {
        b.locations
            .iter()
            .filter_map(|l| Some((l.worker.clone()?, l.tier.clone())))
            .collect()
    };
    if json {
        let blocks: Vec<serde_json::Value> = info
            .blocks
            .iter()
            .map(|b| {
                json!({
                    "block": b.block_id, "offset": b.offset, "length": b.length,
                    "holders": holders(b).iter().map(|(w, tier)| json!({
                        "worker": w.worker_id, "host": w.host, "node": w.node, "tier": tier,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({"blocks": blocks}));
        return Ok(());
    }
    for b in &info.blocks {
        let held: Vec<String> = holders(b)
            .iter()
            .map(|(w, tier)| format!("worker {} {} node {} {tier}", w.worker_id, w.host, w.node))
            .collect();
        let held = if held.is_empty() {
            "not cached".to_owned()
        } else {
            held.join("; ")
        };
        println!("block {} @{} +{}: {held}", b.block_id, b.offset, b.length);
    }
    Ok(())
}

pub async fn mkdir(client: &MasterClient, path: String, parents: bool) -> Result<(), CliError> {
    let req = pb::CreateRequest {
        path,
        recursive: parents,
        ..Default::default()
    };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.create_directory(r).await }
        })
        .await?;
    Ok(())
}

/// Creates an empty, complete file.
pub async fn touch(client: &MasterClient, path: String) -> Result<(), CliError> {
    let req = pb::CreateRequest {
        path: path.clone(),
        ..Default::default()
    };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.create_file(r).await }
        })
        .await?;
    let done = pb::CompleteFileRequest { path, length: 0 };
    client
        .call(|mut c| {
            let r = done.clone();
            async move { c.complete_file(r).await }
        })
        .await?;
    Ok(())
}

pub async fn rm(client: &MasterClient, path: String, recursive: bool) -> Result<(), CliError> {
    let req = pb::DeleteRequest { path, recursive };
    let r = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.delete(r).await }
        })
        .await?;
    eprintln!("removed {} inode(s)", r.inodes);
    Ok(())
}

pub async fn mv(client: &MasterClient, src: String, dst: String) -> Result<(), CliError> {
    let req = pb::RenameRequest { src, dst };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.rename(r).await }
        })
        .await?;
    Ok(())
}

pub async fn mount(client: &MasterClient, spec: MountSpec) -> Result<(), CliError> {
    let req = spec.to_request();
    let r = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.mount(r).await }
        })
        .await?;
    eprintln!("mounted (id {})", r.mount_id);
    Ok(())
}

pub async fn unmount(client: &MasterClient, path: String) -> Result<(), CliError> {
    let req = pb::PathRequest { path };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.unmount(r).await }
        })
        .await?;
    Ok(())
}

pub async fn mounts(client: &MasterClient, json: bool) -> Result<(), CliError> {
    let t = client
        .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
        .await?;
    for m in t.mounts {
        let wt = pb::WriteType::try_from(m.write_type)
            .map(|w| w.as_str_name())
            .unwrap_or("?");
        let sync = weir_api::SyncPolicy::from_pb(m.sync_mode, m.sync_interval_ms).to_string();
        if json {
            println!(
                "{}",
                json!({"path": m.path, "ufsUri": m.ufs_uri, "readOnly": m.read_only, "writeType": wt, "sync": sync, "options": m.options, "mountId": m.mount_id})
            );
        } else {
            println!(
                "{} -> {} ({}{}, sync {sync})",
                m.path,
                m.ufs_uri,
                wt,
                if m.read_only { ", read-only" } else { "" }
            );
        }
    }
    Ok(())
}

pub async fn set_pin(client: &MasterClient, path: String, pinned: bool) -> Result<(), CliError> {
    let req = pb::SetAttributeRequest {
        path,
        pinned: Some(pinned),
        ..Default::default()
    };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.set_attribute(r).await }
        })
        .await?;
    Ok(())
}
