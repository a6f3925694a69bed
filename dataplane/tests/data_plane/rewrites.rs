//! Files that exist change through FUSE as a whole new version: writes at
//! any offset, appends and truncations reach the under-storage (a local
//! directory and S3) when the file is closed, keep its mode and owner,
//! and a reader that had the old version open never gets a mix. New files
//! and directories belong to the user who made them.

use crate::cluster::*;
use crate::source::{Source, parquet_like, sha};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use weir::proto::master as pb;

/// `sh -c script` as uid and gid 65534; its stderr when it fails.
fn as_nobody(script: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", script])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t83_files_that_exist_change_as_a_whole_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let local = Source::local(tmp.path());
    let Source::Local(root) = &local else {
        unreachable!("a local source")
    };
    let old = parquet_like(6 << 20, 83);
    std::fs::write(root.join("data.bin"), &old).unwrap();
    std::fs::create_dir(root.join("shared")).unwrap();
    std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let s3 = Source::s3(tmp.path(), "rewrites").await;
    s3.put("log.txt", b"first line\n").await;
    let mut c = Cluster::start(1, "256MiB").await;
    local
        .mount(
            &c,
            "/l",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            60_000,
        )
        .await;
    s3.mount(
        &c,
        "/s",
        pb::WriteType::CacheThrough,
        pb::SyncMode::Interval,
        60_000,
    )
    .await;
    // Temporary directories are 0700: nobody must reach the mount point.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mp = c.fuse("/", &["--allow-other"]).await;
    let data = mp.join("l/data.bin");
    assert_eq!(std::fs::read(&data).unwrap(), old, "cached whole");

    // A reader holding the old version open.
    let mut reader = std::fs::File::open(&data).unwrap();
    let mut head = vec![0; 1 << 20];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..1 << 20]);

    // Writes in place, at two offsets, through one descriptor.
    let mut want = old.clone();
    want[100..105].copy_from_slice(b"HELLO");
    want[(5 << 20)..(5 << 20) + 5].copy_from_slice(b"WORLD");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    f.write_all_at(b"HELLO", 100).unwrap();
    f.write_all_at(b"WORLD", 5 << 20).unwrap();
    let mut back = [0; 5];
    f.read_exact_at(&mut back, 100).unwrap();
    assert_eq!(&back, b"HELLO", "the writer reads what it wrote");
    drop(f);
    assert_eq!(sha(&std::fs::read(&data).unwrap()), sha(&want));
    assert_eq!(
        sha(&std::fs::read(root.join("data.bin")).unwrap()),
        sha(&want),
        "the under-storage has the new version"
    );
    // The old reader: the old bytes whole, or ESTALE; never the new ones.
    let mut rest = vec![0; old.len() - (1 << 20)];
    match reader.read_exact(&mut rest) {
        Ok(()) => assert_eq!(sha(&rest), sha(&old[1 << 20..]), "old bytes only"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
    }

    // Mode and owner survive a rewrite; append, then truncate by path.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&data)
        .unwrap();
    f.write_all(b"TAIL").unwrap();
    drop(f);
    want.extend_from_slice(b"TAIL");
    assert_eq!(
        sha(&std::fs::read(root.join("data.bin")).unwrap()),
        sha(&want)
    );
    nix::unistd::truncate(&data, 10).unwrap();
    assert_eq!(std::fs::read(root.join("data.bin")).unwrap(), want[..10]);
    assert_eq!(std::fs::read(&data).unwrap(), want[..10]);
    for m in [
        std::fs::metadata(root.join("data.bin")).unwrap(),
        std::fs::metadata(&data).unwrap(),
    ] {
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o640, 65534, 65534),
            "mode and owner kept"
        );
    }

    // A write past the end after a seek: zeros between.
    let mut f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.seek(SeekFrom::Start(20)).unwrap();
    f.write_all(b"Z").unwrap();
    drop(f);
    let mut sparse = want[..10].to_vec();
    sparse.extend_from_slice(&[0; 10]);
    sparse.push(b'Z');
    assert_eq!(std::fs::read(root.join("data.bin")).unwrap(), sparse);

    // What a user makes is theirs, in the source too; a new file takes
    // attribute changes at once (its commit does not wait for close's
    // asynchronous release).
    let shared = mp.join("l/shared");
    as_nobody(&format!(
        "cd {} && echo mine > mine.txt && mkdir sub && touch -d 2020-01-01 mine.txt",
        shared.display()
    ))
    .unwrap();
    for name in ["mine.txt", "sub"] {
        let m = std::fs::metadata(root.join("shared").join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name} in the source");
        let m = std::fs::metadata(shared.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{name} through FUSE");
    }
    let m = std::fs::metadata(root.join("shared/mine.txt")).unwrap();
    assert_eq!(m.mtime(), 1577836800, "touch -d reached the source");
    // In a set-group-id directory, new entries take its group, and a new
    // directory is set-group-id too.
    let sgid = shared.join("sgid");
    std::fs::create_dir(&sgid).unwrap();
    std::os::unix::fs::chown(&sgid, None, Some(4321)).unwrap();
    std::fs::set_permissions(&sgid, std::fs::Permissions::from_mode(0o2777)).unwrap();
    as_nobody(&format!(
        "cd {} && echo x > f && mkdir d && mkfifo p",
        sgid.display()
    ))
    .unwrap();
    for name in ["f", "d", "p"] {
        for m in [
            std::fs::symlink_metadata(root.join("shared/sgid").join(name)).unwrap(),
            std::fs::symlink_metadata(sgid.join(name)).unwrap(),
        ] {
            assert_eq!((m.uid(), m.gid()), (65534, 4321), "{name}");
        }
    }
    assert_ne!(
        std::fs::metadata(root.join("shared/sgid/d"))
            .unwrap()
            .mode()
            & 0o2000,
        0,
        "a new directory is set-group-id"
    );
    std::fs::write(shared.join("roots.txt"), b"root's").unwrap();
    let err = as_nobody(&format!("echo x >> {}", shared.join("roots.txt").display()))
        .expect_err("another user's 0644 file");
    assert!(err.contains("Permission denied"), "{err}");

    // A name of the longest length a name may have is rewritten too.
    let long = shared.join("n".repeat(255));
    std::fs::write(&long, b"short").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&long)
        .unwrap();
    f.write_all(b" and long").unwrap();
    drop(f);
    assert_eq!(std::fs::read(&long).unwrap(), b"short and long");

    // S3: an append writes the object anew.
    let log = mp.join("s/log.txt");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"second line\n").unwrap();
    drop(f);
    assert_eq!(
        s3.get("log.txt").await.as_deref(),
        Some(&b"first line\nsecond line\n"[..])
    );
    assert_eq!(std::fs::read(&log).unwrap(), b"first line\nsecond line\n");
    assert_eq!(s3.tree().await, ["log.txt"], "no scratch names left behind");
    let _ = &mut c;
}
