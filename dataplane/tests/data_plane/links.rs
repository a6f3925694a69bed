//! Symbolic links in a local under-storage: followed only while they stay
//! inside the mount's root. Links that lead out (absolute, `..`, a
//! directory elsewhere, `/proc`'s magic links) and loops are left out of
//! listings and never read, through FUSE or `weir fs cat`; in-root links,
//! laid out as a Hugging Face cache is, read their target's bytes.

use crate::cluster::*;
use crate::source::Source;
use sha2::Digest;
use std::os::unix::fs::symlink;
use std::process::Command;
use weir::proto::master as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t81_links_never_lead_out_of_the_mount_root() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"OUTSIDE THE DATASET\n").unwrap();
    let source = Source::local(tmp.path());
    let Source::Local(root) = &source else {
        unreachable!("a local source")
    };
    let blob = b"weights of the model".repeat(1000);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("snapshots/r1")).unwrap();
    std::fs::write(root.join("blobs/sha-1"), &blob).unwrap();
    symlink("../../blobs/sha-1", root.join("snapshots/r1/model.bin")).unwrap();
    symlink("../blobs", root.join("snapshots/all-blobs")).unwrap();
    symlink(outside.join("secret"), root.join("escape")).unwrap();
    symlink("../../../../../../../..", root.join("up")).unwrap();
    symlink(&outside, root.join("elsewhere")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();

    let mut c = Cluster::start(1, "64MiB").await;
    source
        .mount(
            &c,
            "/l",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            300,
        )
        .await;
    let mp = c.fuse("/", &[]).await;
    let l = mp.join("l");

    let mut listed: Vec<String> = std::fs::read_dir(&l)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["blobs", "snapshots"],
        "links out of the root are left out"
    );
    assert_eq!(
        std::fs::read(l.join("snapshots/r1/model.bin")).unwrap(),
        blob
    );
    assert_eq!(
        std::fs::read(l.join("snapshots/all-blobs/sha-1")).unwrap(),
        blob
    );
    for name in [
        "escape",
        "up/etc/passwd",
        "elsewhere/secret",
        "loop-a",
        "magic",
    ] {
        let err = std::fs::read(l.join(name)).expect_err(name);
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{name}: {err}");
        let out = Command::new(crate::common::weir_bin())
            .args([
                "fs",
                "--masters",
                &c.master_addr,
                "cat",
                &format!("/l/{name}"),
            ])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "weir fs cat /l/{name} served {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("OUTSIDE"),
            "{name}"
        );
    }
    assert_eq!(
        cat_sha(&c, "/l/snapshots/r1/model.bin"),
        hex(&sha2::Sha256::digest(&blob))
    );

    // A link that was inside and is swapped for one that leads out: the
    // next check leaves it out, and nothing of the outside is served.
    std::fs::remove_file(root.join("snapshots/r1/model.bin")).unwrap();
    symlink(outside.join("secret"), root.join("snapshots/r1/model.bin")).unwrap();
    wait("the swapped link left out", || async {
        std::fs::read(l.join("snapshots/r1/model.bin"))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    })
    .await;
    let out = Command::new(crate::common::weir_bin())
        .args([
            "fs",
            "--masters",
            &c.master_addr,
            "cat",
            "/l/snapshots/r1/model.bin",
        ])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("OUTSIDE"));
}
