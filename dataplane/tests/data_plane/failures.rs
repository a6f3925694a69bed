//! Failures under reads: a killed worker, a dead under-storage.

use crate::cluster::*;
use crate::common::{Proc, creds, s3_server};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use weir::client::ClientError;
use weir::client::FileSystem;
use weir::proto::master as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t30_a_killed_worker_or_a_dead_s3_never_yields_wrong_bytes_or_half_blocks() {
    let mut s3 = s3_server("bkt").await;
    let cred_dir = tempfile::tempdir().unwrap();
    let creds = creds(cred_dir.path());
    let direct = s3_ufs(&s3.endpoint, "bkt", &creds);
    let pattern = Pattern::new(3);
    let len = 3 * BLOCK - 12345;
    upload(&*direct, "big", &pattern, len).await;
    upload(&*direct, "never-read", &pattern, 5 << 20).await;
    let mut c = Cluster::start(2, "1GiB").await;
    c.mount(
        "/s3",
        "s3://bkt",
        &[("endpoint", &s3.endpoint)],
        &creds,
        pb::WriteType::CacheThrough,
        true,
    )
    .await;
    // Read over the data port, as a remote client does.
    let mut cfg = c.client_config();
    cfg.short_circuit = false;
    let fs = FileSystem::new(cfg).unwrap();
    assert_eq!(
        client_sha(&fs, "/s3/big").await,
        pattern.sha256(len),
        "cold"
    );
    let mut r = fs.open("/s3/big").await.unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    let mut killed = false;
    while off < len {
        let n = r.read_at(off, &mut buf).await.unwrap();
        h.update(&buf[..n]);
        off += n as u64;
        if !killed && off >= BLOCK + (8 << 20) {
            // Kill the worker streaming block 1 to us, mid-block.
            let info = fs.block_info("/s3/big").await.unwrap();
            let holder = info.blocks[1].locations[0].worker.clone().unwrap();
            let port = holder.rpc_port;
            let victim = c
                .workers
                .iter()
                .position(|w| w.args.iter().any(|a| a.ends_with(&format!(":{port}"))))
                .unwrap();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &worker_pid(&c.workers[victim]).to_string()])
                .status();
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(
        hex(&h.finalize()),
        pattern.sha256(len),
        "read across a worker's death"
    );

    // S3 down: a clear error, and no block (or half block) of the file.
    let id = c.status("/s3/never-read").await.id;
    s3.stop();
    let err = match fs.open("/s3/never-read").await {
        Ok(mut r) => r.read_at(0, &mut buf).await.unwrap_err(),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        matches!(err, ClientError::Worker { .. } | ClientError::Data { .. }),
        "{err:?}"
    );
    assert!(msg.contains("never-read") || msg.contains("bkt"), "{msg}");
    // A file's blocks are `<block>.<offset>.<len>.block` markers over its
    // `<inode>.data` file; the data file goes with its last block.
    for name in c.tier_files() {
        let block = name.split('.').next().and_then(|b| b.parse::<u64>().ok());
        let of_file = match block {
            Some(n) if name.ends_with(".data") => n == id,
            Some(b) => b >> 24 == id,
            None => false,
        };
        assert!(!of_file, "{name}: part of an unreadable file kept");
    }

    // Every worker down (S3 still down, so only the cache has the bytes):
    // a read waits for them to come back and then gets the right bytes...
    for w in c.workers.iter_mut() {
        w.kill9();
    }
    let down = Instant::now();
    let reading = {
        let fs = fs.clone();
        tokio::spawn(async move { client_sha(&fs, "/s3/big").await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!reading.is_finished(), "the read waits for a worker");
    for w in c.workers.iter_mut() {
        w.restart();
    }
    assert_eq!(
        reading.await.unwrap(),
        pattern.sha256(len),
        "read across every worker's restart"
    );
    eprintln!(
        "a read with every worker down finished {:.1?} after they went",
        down.elapsed()
    );
    // ...and when none comes back, it fails (after its retry budget of
    // 15 s) with an error, never with wrong bytes.
    for w in c.workers.iter_mut() {
        w.kill9();
    }
    let down = Instant::now();
    let mut r = fs.open("/s3/big").await.unwrap();
    let err = r.read_at(0, &mut buf).await.unwrap_err();
    let waited = down.elapsed();
    eprintln!("with no worker left the read failed after {waited:.1?}: {err}");
    assert!(
        matches!(err, ClientError::Worker { .. } | ClientError::Data { .. }),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(60),
        "the read gave up after {waited:?}"
    );
}

fn worker_pid(p: &Proc) -> u32 {
    // The child's pid, from /proc: the only weir worker with these args.
    let want = p.args.join("\0");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&want)
        {
            return pid;
        }
    }
    panic!("no process for {}", p.name);
}
