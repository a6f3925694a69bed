//! Reads: cold and warm, through every route, and the tiers under them.

use crate::cluster::*;
use crate::common::{CountingProxy, creds, http_get, s3_server};
use std::collections::BTreeMap;
use std::time::Duration;
use weir::proto::master as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_reads_match_cold_and_warm_and_warm_reads_stay_off_s3() {
    let s3 = s3_server("bkt").await;
    let proxy = CountingProxy::start(format!("127.0.0.1:{}", s3.port)).await;
    let cred_dir = tempfile::tempdir().unwrap();
    let creds = creds(cred_dir.path());
    let direct = s3_ufs(&s3.endpoint, "bkt", &creds);
    let pattern = Pattern::new(42);
    let files: [(&str, u64); 6] = [
        ("zero", 0),
        ("one", 1),
        ("block-1", BLOCK - 1),
        ("block", BLOCK),
        ("block+1", BLOCK + 1),
        ("gib", 1 << 30),
    ];
    for (name, len) in files {
        upload(&*direct, &format!("d/{name}"), &pattern, len).await;
    }
    let mut c = Cluster::start(1, "3GiB").await;
    let endpoint = format!("http://{}", proxy.addr);
    c.mount(
        "/s3",
        "s3://bkt",
        &[("endpoint", &endpoint)],
        &creds,
        pb::WriteType::CacheThrough,
        true,
    )
    .await;
    let mnt = c.fuse("/s3", &[]).await;
    let fs = c.fs();
    let want: BTreeMap<&str, String> = files
        .iter()
        .map(|(n, len)| (*n, pattern.sha256(*len)))
        .collect();

    // Cold: each file first read through one of the three ways.
    for (i, (name, _)) in files.iter().enumerate() {
        let path = format!("/s3/d/{name}");
        let got = match i % 3 {
            0 => client_sha(&fs, &path).await,
            1 => file_sha(&mnt.join("d").join(name)),
            _ => cat_sha(&c, &path),
        };
        assert_eq!(got, want[name], "cold read of {name} (way {})", i % 3);
    }
    // The whole-block caches of partial reads settle; then nothing more
    // may come from S3.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fetched = proxy.bytes();
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    assert!(
        fetched >= total && fetched < total + total / 10,
        "cold reads fetched {fetched} bytes for {total}"
    );
    for (name, len) in files {
        let path = format!("/s3/d/{name}");
        assert_eq!(c.status(&path).await.cached_percent, 100, "{name} cached");
        assert_eq!(
            client_sha(&fs, &path).await,
            want[name],
            "warm client {name}"
        );
        assert_eq!(
            file_sha(&mnt.join("d").join(name)),
            want[name],
            "warm FUSE {name}"
        );
        if len < (256 << 20) {
            assert_eq!(cat_sha(&c, &path), want[name], "warm cat {name}");
        }
    }
    assert_eq!(proxy.bytes(), fetched, "warm reads went to S3");

    // Many readers holding one cached single-block file open at once: the
    // kernel reads it by passthrough and takes one backing file per inode,
    // so each open must get the one the others have (a second backing
    // fails the open with EIO).
    let single = mnt.join("d/block");
    let opened: Vec<std::fs::File> = (0..8)
        .map(|i| {
            std::fs::File::open(&single).unwrap_or_else(|e| panic!("open {i} of d/block: {e}"))
        })
        .collect();
    std::thread::scope(|s| {
        for (i, f) in opened.iter().enumerate() {
            let want = &want["block"];
            s.spawn(move || assert_eq!(&read_sha(f), want, "reader {i} of d/block"));
        }
    });
    drop(opened);

    // A file of many blocks, all cached on this machine's worker: the
    // kernel reads it from the worker's data file itself, so reads need no
    // FUSE daemon at all. Opened (by the daemon), then the daemon stopped:
    // both opens (sharing one backing file) read the whole GiB right, from
    // an emptied page cache.
    let gib = mnt.join("d/gib");
    let opened: Vec<std::fs::File> = (0..2).map(|_| std::fs::File::open(&gib).unwrap()).collect();
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let daemon = nix::unistd::Pid::from_raw(c.fuses[0].0.pid().unwrap() as i32);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, f) in opened.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((i, read_sha(&f)));
            // Closed with the daemon running again.
            f
        });
    }
    let mut shas = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(got) => shas.push(got),
            Err(_) => break,
        }
    }
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(
        shas.len(),
        2,
        "reads of d/gib waited for the stopped FUSE daemon: not passthrough"
    );
    for (i, sha) in shas {
        assert_eq!(
            sha, want["gib"],
            "reader {i} of d/gib with the daemon stopped"
        );
    }

    // Random offsets, through the client and through FUSE.
    let mut x: u64 = 7;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut reader = fs.open("/s3/d/gib").await.unwrap();
    let fuse_file = std::fs::File::open(mnt.join("d/gib")).unwrap();
    for _ in 0..200 {
        let off = next(1 << 30);
        let len = (next(3 << 20) as usize + 1).min(((1u64 << 30) - off) as usize);
        let mut buf = vec![0u8; len];
        let n = reader.read_at(off, &mut buf).await.unwrap();
        assert_eq!(n, len);
        assert!(buf == pattern.bytes(off, len), "client read at {off}+{len}");
        use std::os::unix::fs::FileExt;
        let mut buf2 = vec![0u8; len];
        fuse_file.read_exact_at(&mut buf2, off).unwrap();
        assert!(buf2 == buf, "FUSE read at {off}+{len}");
    }
    let mut r = fs.open("/s3/d/block+1").await.unwrap();
    let mut last = [0u8; 4];
    assert_eq!(r.read_at(BLOCK - 3, &mut last).await.unwrap(), 4);
    assert_eq!(
        last.to_vec(),
        pattern.bytes(BLOCK - 3, 4),
        "across the block edge"
    );
    assert_eq!(r.read_at(BLOCK + 1, &mut last).await.unwrap(), 0, "EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_tiers_evict_to_the_low_watermark_keep_pinned_and_leased_blocks_and_survive_restart() {
    let ufs = tempfile::tempdir().unwrap();
    let pattern = Pattern::new(9);
    for i in 0..20 {
        let mut f = pattern.bytes(i << 20, 1 << 20);
        f[0] = i as u8;
        std::fs::write(ufs.path().join(format!("f{i:02}")), f).unwrap();
    }
    // 12 MiB, evicting from 10.8 MiB down to 6 MiB.
    let mut c = Cluster::start(1, "12MiB:0.9:0.5").await;
    c.mount_local("/l", ufs.path(), false).await;
    let fs = c.fs();
    let read = |i: u64| {
        let fs = fs.clone();
        async move {
            let mut r = fs.open(&format!("/l/f{i:02}")).await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            assert_eq!(r.read_at(0, &mut buf).await.unwrap(), 1 << 20);
            assert_eq!(buf[0], i as u8);
            r
        }
    };
    drop(read(0).await);
    c.set_pinned("/l/f00").await;
    // The pin reaches the worker with a heartbeat after the master's sweep.
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(read(1).await);
    // Held open: its short-circuit lease keeps block f01 in place (once
    // the client's metadata shows the block cached here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = read(1).await;
    for i in 2..20 {
        drop(read(i).await);
    }
    // Removals reach the master with the next heartbeat.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quota = 12u64 << 20;
    let used = |info: &pb::ClusterInfo| info.workers[0].tiers[0].used_bytes;
    let fsc = fs.clone();
    let info = fsc
        .master()
        .call(|mut m| async move { m.get_cluster_info(pb::Empty {}).await })
        .await
        .unwrap();
    assert!(
        used(&info) <= quota * 9 / 10,
        "MEM holds {} of {quota}",
        used(&info)
    );
    let mut cached = Vec::new();
    for i in 0..20 {
        if c.status(&format!("/l/f{i:02}")).await.cached_percent == 100 {
            cached.push(i);
        }
    }
    assert!(
        cached.contains(&0),
        "the pinned file was evicted: {cached:?}"
    );
    assert!(
        cached.contains(&1),
        "the leased file was evicted: {cached:?}"
    );
    assert!(cached.len() < 20, "nothing was evicted: {cached:?}");
    let http = c.workers[0]
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--http-listen="))
        .unwrap()
        .to_owned();
    let metrics = http_get(&http, "/metrics").await;
    let used_metric = metrics
        .lines()
        .find(|l| l.starts_with("weir_worker_tier_used_bytes{tier=\"MEM\"}"))
        .unwrap_or_else(|| panic!("no MEM usage metric in\n{metrics}"));
    assert_eq!(
        used_metric
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        used(&info),
        "per-tier metric"
    );
    // Evictions go down to the low watermark, not one block at a time:
    // right after one, at most the low watermark plus the new block.
    assert!(
        cached.len() <= 11,
        "{} MiB cached after evicting to 6 MiB",
        cached.len()
    );
    drop(held);

    // A restart keeps every block: remove them from the under-storage and
    // read them from the cache alone.
    c.workers[0].terminate();
    c.workers[0].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.wait_workers(1).await;
    for &i in &cached {
        std::fs::remove_file(ufs.path().join(format!("f{i:02}"))).unwrap();
    }
    let fs2 = c.fs();
    for &i in &cached {
        let path = format!("/l/f{i:02}");
        let st = c.status(&path).await;
        assert_eq!(
            st.cached_percent,
            100,
            "{path} (id {}) after restart; tier holds {:?}\n{}",
            st.id,
            c.tier_files(),
            c.workers[0].log_tail()
        );
        let mut want = pattern.bytes(i << 20, 1 << 20);
        want[0] = i as u8;
        let mut r = fs2.open(&path).await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        r.read_at(0, &mut buf).await.unwrap();
        assert!(buf == want, "{path} from the cache after restart");
    }
}
