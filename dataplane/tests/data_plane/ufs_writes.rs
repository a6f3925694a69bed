//! Namespace changes and rewrites on a writable mount reach the
//! under-storage (or are refused with an errno that says why), on a local
//! directory and on S3;
//! `weir fs free` frees every file it is given.

use crate::cluster::*;
use crate::source::{Source, mount_tree, parquet_like};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use weir::proto::master as pb;

fn errno(e: &std::io::Error) -> Option<nix::errno::Errno> {
    e.raw_os_error().map(nix::errno::Errno::from_raw)
}

/// The tree below the mount and the under-storage's, now and after the
/// next listings (nothing may come back or vanish).
async fn same_trees(source: &Source, mnt: &Path, what: &str) {
    let ufs = source.tree().await;
    assert_eq!(
        mount_tree(mnt),
        ufs,
        "{what}: the mount and the under-storage differ"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        mount_tree(mnt),
        ufs,
        "{what}: the next listing changed the mount"
    );
}

async fn namespace_changes_reach(source: Source) {
    let kind = source.name();
    let mut c = Cluster::start(1, "1GiB").await;
    for (name, seed) in [
        ("m/a/1.txt", 1),
        ("m/a/2.txt", 2),
        ("m/b/x.txt", 3),
        ("m/keep.txt", 4),
        ("m/old.txt", 5),
        ("other/y.txt", 6),
    ] {
        source.put(name, &parquet_like(1000, seed)).await;
    }
    source
        .mount_at(
            &c,
            "/m",
            "m",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            1000,
        )
        .await;
    source
        .mount_at(
            &c,
            "/other",
            "other",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            1000,
        )
        .await;
    let root = c.fuse("/", &[]).await;
    let mnt = root.join("m");
    let m = |p: &str| mnt.join(p);
    let sub = source.sub("m");
    same_trees(&sub, &mnt, kind).await;

    std::fs::create_dir(m("new")).unwrap();
    std::fs::create_dir_all(m("new/deeper")).unwrap();
    std::fs::write(m("new/deeper/f.txt"), b"written through").unwrap();
    std::fs::rename(m("a/1.txt"), m("a/one.txt")).unwrap();
    std::fs::rename(m("b"), m("c")).unwrap();
    std::fs::remove_file(m("a/2.txt")).unwrap();
    std::fs::create_dir(m("empty")).unwrap();
    std::fs::remove_dir(m("empty")).unwrap();
    // The usual atomic replace: a new file renamed over the old.
    std::fs::write(m("keep.tmp"), b"replaced").unwrap();
    std::fs::rename(m("keep.tmp"), m("keep.txt")).unwrap();
    assert_eq!(std::fs::read(m("keep.txt")).unwrap(), b"replaced");
    same_trees(&sub, &mnt, &format!("{kind} after mkdir, mv, rm, rmdir")).await;
    assert_eq!(
        sub.get("keep.txt").await.as_deref(),
        Some(&b"replaced"[..]),
        "{kind}: the replaced file in the under-storage"
    );
    assert_eq!(
        sub.get("a/one.txt").await,
        Some(parquet_like(1000, 1)),
        "{kind}: the moved file's bytes"
    );
    let st = c.status("/m/a/one.txt").await;
    assert_eq!(st.persist, pb::PersistState::Persisted as i32);
    assert!(st.ufs_path.ends_with("m/a/one.txt"), "{}", st.ufs_path);
    // Still served from the blocks cached before the move.
    assert_eq!(
        std::fs::read(m("a/one.txt")).unwrap(),
        parquet_like(1000, 1)
    );

    // A directory the under-storage holds more in than Weir listed.
    sub.put("c/unlisted.txt", b"behind Weir").await;
    std::fs::remove_file(m("c/x.txt")).unwrap();
    let err = std::fs::remove_dir(m("c")).unwrap_err();
    assert_eq!(
        errno(&err),
        Some(nix::errno::Errno::ENOTEMPTY),
        "{kind}: {err}"
    );
    // A file that exists changes as a whole new version: truncated and
    // written, then appended to, in the under-storage too.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m("old.txt"))
        .unwrap();
    f.write_all(b"new start").unwrap();
    drop(f);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m("old.txt"))
        .unwrap();
    f.write_all(b", then more").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(m("old.txt")).unwrap(),
        b"new start, then more"
    );
    assert_eq!(
        sub.get("old.txt").await.as_deref(),
        Some(&b"new start, then more"[..]),
        "{kind}: the rewritten file in the under-storage"
    );
    let err = std::fs::rename(m("old.txt"), root.join("other/old.txt")).unwrap_err();
    assert_eq!(
        errno(&err),
        Some(nix::errno::Errno::EXDEV),
        "{kind} mv across mounts: {err}"
    );
    // What was added behind Weir shows after the interval.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    same_trees(
        &sub,
        &mnt,
        &format!("{kind} after the rewrite and the refusal"),
    )
    .await;

    // Removed trees stay removed.
    std::fs::remove_dir_all(m("new")).unwrap();
    std::fs::remove_dir_all(m("c")).unwrap();
    same_trees(&sub, &mnt, &format!("{kind} after rm -r")).await;
    assert_eq!(
        sub.tree().await,
        ["a/", "a/one.txt", "keep.txt", "old.txt"],
        "{kind}"
    );
    let _ = &mut c;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t76_namespace_changes_reach_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    namespace_changes_reach(Source::local(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t77_namespace_changes_reach_s3() {
    let dir = tempfile::tempdir().unwrap();
    namespace_changes_reach(Source::s3(dir.path(), "tree").await).await;
}

/// ASYNC_THROUGH: a file renamed before it was persisted lands in the
/// under-storage under its new name only; one deleted first never lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t78_async_files_renamed_or_deleted_before_persisting() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::s3(dir.path(), "async").await;
    let mut c = Cluster::start(1, "1GiB").await;
    source
        .mount_at(
            &c,
            "/m",
            "",
            pb::WriteType::AsyncThrough,
            pb::SyncMode::Interval,
            1000,
        )
        .await;
    let mnt = c.fuse("/m", &[]).await;
    for i in 0..5 {
        let tmp = mnt.join(format!("part-{i}.tmp"));
        std::fs::write(&tmp, parquet_like(3 << 20, i)).unwrap();
        std::fs::rename(&tmp, mnt.join(format!("part-{i}.parquet"))).unwrap();
    }
    std::fs::write(mnt.join("scratch"), b"never kept").unwrap();
    std::fs::remove_file(mnt.join("scratch")).unwrap();
    wait("the files to be persisted", || async {
        let mut all = true;
        for i in 0..5 {
            all &= c.status(&format!("/m/part-{i}.parquet")).await.persist
                == pb::PersistState::Persisted as i32;
        }
        all
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let want: Vec<String> = (0..5).map(|i| format!("part-{i}.parquet")).collect();
    assert_eq!(source.tree().await, want);
    for i in 0..5 {
        assert_eq!(
            source.get(&format!("part-{i}.parquet")).await,
            Some(parquet_like(3 << 20, i))
        );
    }
    same_trees(&source, &mnt, "async").await;
    let _ = &mut c;
}

/// `weir fs free` of a loaded tree of 3,000 files frees every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t79_free_frees_every_file_of_a_big_tree() {
    let dir = tempfile::tempdir().unwrap();
    let source = Source::local(dir.path());
    for d in 0..30 {
        for f in 0..100 {
            source
                .put(
                    &format!("d{d}/f{f}"),
                    &parquet_like(2000 + f * 10, (d * 100 + f) as u64),
                )
                .await;
        }
    }
    let c = Cluster::start(1, "1GiB").await;
    source
        .mount_at(
            &c,
            "/m",
            "",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            60_000,
        )
        .await;
    let weir = |args: &[&str]| {
        let out = std::process::Command::new(crate::common::weir_bin())
            .args(["fs", "--masters", &c.master_addr])
            .args(args)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "weir fs {args:?}: {said}");
        said
    };
    weir(&["load", "--watch", "/m"]);
    let cached = |path: String| {
        let c = &c;
        async move { c.status(&path).await.cached_percent }
    };
    assert_eq!(cached("/m/d7/f42".into()).await, 100);
    let said = weir(&["free", "--watch", "/m"]);
    for d in 0..30 {
        for f in (0..100).step_by(7) {
            assert_eq!(
                cached(format!("/m/d{d}/f{f}")).await,
                0,
                "d{d}/f{f}: {said}"
            );
        }
    }
    let used = c.fs().capacity().await.unwrap().1;
    assert_eq!(used, 0, "bytes still cached after free: {said}");
}
