//! Files that change in the under-storage behind Weir: never an old byte
//! after the sync interval, never a mix of two versions, on a local
//! directory and on S3; the same after Weir was down; `Never` keeps the
//! cached version on purpose.

use crate::cluster::*;
use crate::source::{Source, parquet_like, sha};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use weir::proto::master as pb;

const MIB: usize = 1 << 20;

/// What a mount serves `name` as, read whole through FUSE.
fn through_fuse(mnt: &Path, name: &str) -> Vec<u8> {
    std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn assert_parquet(bytes: &[u8], what: &str) {
    assert!(
        bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
        "{what}: the magic number is missing at one end"
    );
}

/// The incident: parquet-like files cached (one only in part), rewritten
/// under the same names, read again after the interval.
async fn rewrites_serve_the_new_version(source: Source) {
    let mut c = Cluster::start(1, "1GiB").await;
    let kind = source.name();
    let big_len = BLOCK as usize + 64 * 1024;
    let files: Vec<(&str, usize, usize)> = vec![
        // name, length before, length after
        ("part-0.parquet", big_len, big_len),
        ("part-1.parquet", 8 * MIB, 8 * MIB),
        ("part-2.parquet", 8 * MIB, 9 * MIB + 17),
        ("part-3.parquet", 100 * 1024, 100 * 1024),
    ];
    for (i, (name, len, _)) in files.iter().enumerate() {
        source.put(name, &parquet_like(*len, i as u64 + 1)).await;
    }
    source
        .mount(
            &c,
            "/m",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            1000,
        )
        .await;
    let mnt = c.fuse("/m", &[]).await;

    // The big file: only its first block, read in part, gets cached (one
    // read inside it, away from its start, starts no readahead).
    let fs = c.fs();
    let mut r = fs.open("/m/part-0.parquet").await.unwrap();
    let mut part = vec![0u8; MIB];
    r.read_at(MIB as u64, &mut part).await.unwrap();
    drop(r);
    wait("the first block of part-0 to be cached", || async {
        c.status("/m/part-0.parquet").await.cached_percent > 0
    })
    .await;
    let partly = c.status("/m/part-0.parquet").await.cached_percent;
    assert!(
        partly < 100,
        "{kind}: only the first block is cached ({partly}%)"
    );
    for (name, len, _) in &files[1..] {
        assert_eq!(through_fuse(&mnt, name).len(), *len);
    }

    for (i, (name, _, after)) in files.iter().enumerate() {
        source
            .rewrite_keeping_mtime(name, &parquet_like(*after, 100 + i as u64))
            .await;
    }
    // The interval, the client's metadata cache and the kernel's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (i, (name, _, after)) in files.iter().enumerate() {
        let want = parquet_like(*after, 100 + i as u64);
        let got = through_fuse(&mnt, name);
        assert_parquet(&got, name);
        assert_eq!(got.len(), want.len(), "{kind} {name}: length");
        assert_eq!(
            sha(&got),
            sha(&want),
            "{kind} {name}: FUSE serves other bytes than the source"
        );
        assert_eq!(
            cat_sha(&c, &format!("/m/{name}")),
            sha(&want),
            "{kind} {name}: weir fs cat"
        );
    }
    // The new version's blocks are the ones cached now.
    wait("the new version to be cached", || async {
        c.status("/m/part-1.parquet").await.cached_percent == 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let want = parquet_like(8 * MIB, 101);
    assert_eq!(sha(&through_fuse(&mnt, "part-1.parquet")), sha(&want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t70_rewritten_files_on_a_local_directory_serve_only_the_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    rewrites_serve_the_new_version(Source::local(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t71_rewritten_objects_on_s3_serve_only_the_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    rewrites_serve_the_new_version(Source::s3(dir.path(), "rewrites").await).await;
}

/// A reader that opened the old version keeps it whole or gets ESTALE;
/// never the new bytes after the old.
async fn open_reader_across_a_rewrite(source: Source) {
    let mut c = Cluster::start(1, "1GiB").await;
    let kind = source.name();
    let len = BLOCK as usize + 2 * MIB;
    let old = parquet_like(len, 1);
    let new = parquet_like(len, 2);
    source.put("f.parquet", &old).await;
    source
        .mount(
            &c,
            "/m",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            1000,
        )
        .await;
    let mnt = c.fuse("/m", &[]).await;
    let f = std::fs::File::open(mnt.join("f.parquet")).unwrap();
    let mut buf = vec![0u8; MIB];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, old[..MIB]);
    source.put("f.parquet", &new).await;
    // The rest through the descriptor opened on the old version: each
    // read is old bytes, until one fails with ESTALE.
    let mut offset = MIB;
    let mut stale = false;
    while offset < len {
        let n = MIB.min(len - offset);
        match f.read_exact_at(&mut buf[..n], offset as u64) {
            Ok(()) => assert!(
                buf[..n] == old[offset..offset + n],
                "{kind}: the open reader got other bytes than the old version at {offset}"
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc_estale()), "{kind}: {e}");
                stale = true;
                break;
            }
        }
        offset += n;
    }
    eprintln!(
        "{kind}: the open reader ended {}",
        if stale {
            "with ESTALE"
        } else {
            "with the old version whole"
        }
    );
    drop(f);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = through_fuse(&mnt, "f.parquet");
    assert_eq!(
        sha(&got),
        sha(&new),
        "{kind}: a new open after the interval"
    );
}

fn libc_estale() -> i32 {
    nix::errno::Errno::ESTALE as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t72_an_open_reader_keeps_the_old_version_or_gets_estale() {
    let dir = tempfile::tempdir().unwrap();
    open_reader_across_a_rewrite(Source::local(dir.path())).await;
    let dir = tempfile::tempdir().unwrap();
    open_reader_across_a_rewrite(Source::s3(dir.path(), "reader").await).await;
}

/// Rewritten, grown, shrunk, deleted and new files while every Weir
/// process is down; the interval is an hour, so only the restart can make
/// Weir look again.
async fn changes_while_down(source: Source) {
    let mut c = Cluster::start(1, "1GiB").await;
    let kind = source.name();
    let before: Vec<(&str, usize)> = vec![
        ("same.bin", 3 * MIB),
        ("grows.bin", 17),
        ("shrinks.bin", BLOCK as usize + MIB),
        ("goes.bin", 5 * MIB),
    ];
    for (i, (name, len)) in before.iter().enumerate() {
        source
            .put(&format!("d/{name}"), &parquet_like(*len, i as u64))
            .await;
    }
    source
        .mount(
            &c,
            "/m",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            3_600_000,
        )
        .await;
    let fs = c.fs();
    for (name, _) in &before {
        client_sha(&fs, &format!("/m/d/{name}")).await;
    }
    wait("everything cached", || async {
        let mut all = true;
        for (name, _) in &before {
            all &= c.status(&format!("/m/d/{name}")).await.cached_percent == 100;
        }
        all
    })
    .await;

    for w in &mut c.workers {
        w.kill9();
    }
    c.master.kill9();
    let after: Vec<(&str, usize)> = vec![
        ("same.bin", 3 * MIB),
        ("grows.bin", 100),
        ("shrinks.bin", MIB),
        ("new.bin", 2 * MIB),
        ("newdir/inside.bin", 1000),
    ];
    for (i, (name, len)) in after.iter().enumerate() {
        source
            .rewrite_or_put(&format!("d/{name}"), &parquet_like(*len, 50 + i as u64))
            .await;
    }
    source.remove("d/goes.bin").await;
    c.master.restart();
    for w in &mut c.workers {
        w.restart();
    }
    c.wait_workers(1).await;

    let mnt = c.fuse("/m", &[]).await;
    for (i, (name, len)) in after.iter().enumerate() {
        let want = parquet_like(*len, 50 + i as u64);
        let started = Instant::now();
        let got = through_fuse(&mnt.join("d"), name);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{kind} {name}: took {:?}",
            started.elapsed()
        );
        assert_eq!(got.len(), *len, "{kind} {name}: length after the restart");
        assert_eq!(
            sha(&got),
            sha(&want),
            "{kind} {name}: bytes after the restart"
        );
        assert_eq!(client_sha(&fs, &format!("/m/d/{name}")).await, sha(&want));
    }
    let err = std::fs::metadata(mnt.join("d/goes.bin")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{kind}: goes.bin");
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["grows.bin", "new.bin", "newdir", "same.bin", "shrinks.bin"],
        "{kind}: the listing after the restart"
    );
}

impl Source {
    async fn rewrite_or_put(&self, name: &str, bytes: &[u8]) {
        if self.get(name).await.is_some() {
            self.rewrite_keeping_mtime(name, bytes).await;
        } else {
            self.put(name, bytes).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t73_changes_while_weir_is_down_are_read_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    changes_while_down(Source::local(dir.path())).await;
    let dir = tempfile::tempdir().unwrap();
    changes_while_down(Source::s3(dir.path(), "down").await).await;
}

/// `Never` keeps serving what it cached (and the mount table says so);
/// `Always` sees a rewrite at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t74_never_keeps_the_cached_version_and_always_checks_every_open() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sources = [Source::local(dirs[0].path()), Source::local(dirs[1].path())];
    let c = Cluster::start(1, "1GiB").await;
    let modes = [
        ("never", pb::SyncMode::Never),
        ("always", pb::SyncMode::Always),
    ];
    for ((m, mode), source) in modes.iter().zip(&sources) {
        source.put("f", &parquet_like(MIB, 1)).await;
        source
            .mount(&c, &format!("/{m}"), pb::WriteType::CacheThrough, *mode, 0)
            .await;
    }
    let fs = c.fs();
    for ((m, _), source) in modes.iter().zip(&sources) {
        client_sha(&fs, &format!("/{m}/f")).await;
        wait("cached", || async {
            c.status(&format!("/{m}/f")).await.cached_percent == 100
        })
        .await;
        source
            .rewrite_keeping_mtime("f", &parquet_like(MIB, 2))
            .await;
    }
    // Past the window in which a lookup and its open share one check.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fresh_client = c.fs();
    assert_eq!(
        client_sha(&fresh_client, "/never/f").await,
        sha(&parquet_like(MIB, 1)),
        "Never serves the version it loaded"
    );
    assert_eq!(
        client_sha(&fresh_client, "/always/f").await,
        sha(&parquet_like(MIB, 2)),
        "Always sees the rewrite at the next open"
    );
    let out = std::process::Command::new(crate::common::weir_bin())
        .args(["fs", "--masters", &c.master_addr, "mounts"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("/never -> local://") && table.contains("sync Never (immutable)"),
        "{table}"
    );
    assert!(table.contains("sync Always"), "{table}");
}

/// Errors that asking again cannot cure come back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t75_final_errors_fail_at_once_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::local(dir.path());
    let mut c = Cluster::start(1, "1GiB").await;
    source.put("gone", &parquet_like(MIB, 1)).await;
    source.put("kept", &parquet_like(MIB, 1)).await;
    let Source::Local(root) = &source else {
        unreachable!()
    };
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad-\xff")), b"x").unwrap();
    // Never: Weir is told the file exists and is not asked to look again.
    source
        .mount(
            &c,
            "/m",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Never,
            0,
        )
        .await;
    let mnt = c.fuse("/m", &[]).await;
    let mut listed: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["gone", "kept"],
        "a name that is not UTF-8 is left out"
    );
    source.remove("gone").await;

    let started = Instant::now();
    let err = std::fs::read(mnt.join("gone")).unwrap_err();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a vanished file failed after {took:?}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");

    let started = Instant::now();
    let err = std::fs::read(mnt.join(std::ffi::OsStr::from_bytes(b"bad-\xff"))).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    let err = std::fs::write(mnt.join(std::ffi::OsStr::from_bytes(b"new-\xfe")), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::errno::Errno::EINVAL as i32),
        "creating such a name: {err}"
    );

    let out = fs_cat(&c, "/m/gone");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("gone"), "the error names the file: {said}");
    let log = std::fs::read_to_string(c.dir.path().join("master.log")).unwrap();
    assert!(
        log.contains("not UTF-8"),
        "the master says why a name is left out"
    );
    let _ = &mut c;
}
