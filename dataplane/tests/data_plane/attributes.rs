//! `chmod`, `chown` and `touch` through FUSE take effect or say no: on a
//! writable local directory they change the source file the same way (and
//! the file keeps its cached blocks); on S3, which keeps no such
//! attributes, mode and owner live in Weir (through re-syncs) and `touch`
//! is refused with EPERM; on a read-only mount all three give EROFS. `ln -s`, `ln` and `mkfifo` make a link, a
//! second name (one inode, whichever name is used) or a fifo where the
//! store holds them, and are refused
//! where it does not; extended attributes, which Weir does not keep, are
//! refused everywhere.

use crate::cluster::*;
use crate::source::Source;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use weir::proto::master as pb;

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn on(mp: &Path, rel: &str) -> String {
    mp.join(rel).to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t82_chmod_chown_and_touch_reach_the_under_storage_or_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let local = Source::local(tmp.path());
    let Source::Local(root) = &local else {
        unreachable!("a local source")
    };
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/f.bin"), vec![7u8; 3 << 20]).unwrap();
    let s3 = Source::s3(tmp.path(), "attrs").await;
    s3.put("o.bin", b"an object").await;
    let mut c = Cluster::start(1, "64MiB").await;
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
        1_000,
    )
    .await;
    c.mount_local("/ro", root, true).await;
    let mp = c.fuse("/", &[]).await;
    assert_eq!(std::fs::read(mp.join("l/d/f.bin")).unwrap().len(), 3 << 20);
    let id = c.status("/l/d/f.bin").await.id;

    run("chmod", &["0640", &on(&mp, "l/d/f.bin")]).unwrap();
    run("chmod", &["0700", &on(&mp, "l/d")]).unwrap();
    run("chown", &["65534:65534", &on(&mp, "l/d/f.bin")]).unwrap();
    run(
        "touch",
        &["-m", "-d", "2020-01-02 03:04:05 UTC", &on(&mp, "l/d/f.bin")],
    )
    .unwrap();
    let source = std::fs::metadata(root.join("d/f.bin")).unwrap();
    assert_eq!(source.permissions().mode() & 0o7777, 0o640);
    assert_eq!((source.uid(), source.gid()), (65534, 65534));
    assert_eq!(source.mtime(), 1_577_934_245);
    assert_eq!(
        std::fs::metadata(root.join("d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    // Weir shows what the source now has, at once and without a new
    // listing, and the file is the same one: its cached blocks still serve.
    let shown = std::fs::metadata(mp.join("l/d/f.bin")).unwrap();
    assert_eq!(shown.permissions().mode() & 0o7777, 0o640);
    assert_eq!((shown.uid(), shown.gid()), (65534, 65534));
    assert_eq!(shown.mtime(), 1_577_934_245);
    assert_eq!(
        c.status("/l/d/f.bin").await.id,
        id,
        "the same content keeps its inode"
    );
    assert_eq!(
        std::fs::read(mp.join("l/d/f.bin")).unwrap(),
        vec![7u8; 3 << 20]
    );
    // A chmod to the mode it has is a no-op that succeeds.
    run("chmod", &["0640", &on(&mp, "l/d/f.bin")]).unwrap();

    for (program, args) in [
        ("chmod", vec!["0600"]),
        ("chown", vec!["4242"]),
        ("touch", vec!["-m", "-d", "2021-06-07 08:09:10 UTC"]),
    ] {
        let mut all = args.clone();
        let target = on(&mp, "ro/d/f.bin");
        all.push(&target);
        let err = run(program, &all).expect_err(program);
        assert!(
            err.contains("Read-only file system"),
            "{program} read-only: {err}\n{}",
            c.fuses[0].0.log_tail()
        );
    }
    // S3 keeps no mode or owner: they live in Weir, through re-syncs; its
    // mtime is the store's own, so `touch` is refused.
    let object = on(&mp, "s/o.bin");
    run("chmod", &["0600", &object]).unwrap();
    run("chown", &["4242", &object]).unwrap();
    let err =
        run("touch", &["-m", "-d", "2021-06-07 08:09:10 UTC", &object]).expect_err("touch on S3");
    assert!(
        err.contains("Operation not permitted"),
        "touch on S3: {err}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let _ = std::fs::read_dir(mp.join("s")).unwrap().count();
    let m = std::fs::metadata(mp.join("s/o.bin")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (0o600, 4242),
        "kept through a re-sync"
    );
    assert_eq!(s3.get("o.bin").await.as_deref(), Some(&b"an object"[..]));

    // `ln -s` makes a link in a local source; reading it reads its target.
    run("ln", &["-s", "f.bin", &on(&mp, "l/d/link")]).unwrap();
    assert_eq!(
        std::fs::read_link(root.join("d/link")).unwrap(),
        Path::new("f.bin")
    );
    assert_eq!(
        std::fs::read_link(mp.join("l/d/link")).unwrap(),
        Path::new("f.bin")
    );
    assert_eq!(
        std::fs::read(mp.join("l/d/link")).unwrap(),
        vec![7u8; 3 << 20]
    );

    // Hard links and special files are made in a local source.
    let (file, second, fifo) = (
        on(&mp, "l/d/f.bin"),
        on(&mp, "l/d/second"),
        on(&mp, "l/d/fifo"),
    );
    run("ln", &[&file, &second]).unwrap();
    run("mkfifo", &[&fifo]).unwrap();
    let (f, s) = (
        std::fs::metadata(root.join("d/f.bin")).unwrap(),
        std::fs::metadata(root.join("d/second")).unwrap(),
    );
    assert_eq!((f.ino(), f.nlink()), (s.ino(), 2), "one file, two names");
    assert_eq!(std::fs::read(&second).unwrap(), vec![7u8; 3 << 20]);
    assert!(
        std::fs::symlink_metadata(root.join("d/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "shown as a fifo"
    );
    // Through Weir the two names are one inode: one number, two links,
    // one set of attributes (and of cached blocks).
    let (fa, sa) = (
        std::fs::metadata(&file).unwrap(),
        std::fs::metadata(&second).unwrap(),
    );
    assert_eq!((fa.ino(), fa.nlink()), (sa.ino(), 2), "one inode in Weir");
    std::fs::set_permissions(&second, std::fs::Permissions::from_mode(0o640)).unwrap();
    for (at, what) in [
        (Path::new(&file), "the other name"),
        (&root.join("d/f.bin"), "the source"),
    ] {
        assert_eq!(
            std::fs::metadata(at).unwrap().mode() & 0o7777,
            0o640,
            "a chmod through one name shows through {what}"
        );
    }
    std::fs::remove_file(&second).unwrap();
    assert!(!root.join("d/second").exists());
    for at in [Path::new(&file), &root.join("d/f.bin")] {
        assert_eq!(std::fs::metadata(at).unwrap().nlink(), 1, "{at:?}");
    }
    // Writing through one name gives that name a new version; the other
    // keeps its bytes, as a save by rename does.
    let third = on(&mp, "l/d/third");
    run("ln", &[&file, &third]).unwrap();
    std::fs::write(&third, b"new bytes").unwrap();
    assert_eq!(std::fs::read(&third).unwrap(), b"new bytes");
    assert_eq!(std::fs::read(root.join("d/third")).unwrap(), b"new bytes");
    assert_eq!(std::fs::read(&file).unwrap(), vec![7u8; 3 << 20]);
    assert_eq!(std::fs::metadata(&file).unwrap().nlink(), 1);

    // What a store cannot hold is refused, and nothing appears.
    let (s3_link, s3_file) = (on(&mp, "s/link"), on(&mp, "s/o.bin"));
    let refusals: [(&str, Vec<&str>, &str); 4] = [
        (
            "ln",
            vec!["-s", "o.bin", &s3_link],
            "Operation not permitted",
        ),
        ("ln", vec![&s3_file, &s3_link], "Operation not permitted"),
        ("mkfifo", vec![&s3_link], "Operation not permitted"),
        (
            "python3",
            vec![
                "-c",
                "import os,sys; os.setxattr(sys.argv[1], 'user.k', b'v')",
                &file,
            ],
            "Operation not supported",
        ),
    ];
    for (program, args, says) in refusals {
        let err = run(program, &args).expect_err(program);
        assert!(err.contains(says), "{program} {args:?}: {err}");
    }
    assert_eq!(s3.tree().await, ["o.bin"]);
    let ro_link = on(&mp, "ro/d/new");
    let err = run("ln", &["-s", "f.bin", &ro_link]).expect_err("ln -s on a read-only mount");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!root.join("d/new").exists());
}
