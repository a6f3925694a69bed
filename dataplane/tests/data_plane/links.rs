//! Symbolic links in a local under-storage are shown as links: `readlink`
//! gives the source's target and the reader's own kernel resolves it, so
//! Weir never reads through one, whether it leads out of the mount's root
//! (absolute, `..`, a directory elsewhere, `/proc`'s magic links), loops,
//! or stays inside. In-root links laid out as a Hugging Face cache is read
//! their blob's bytes, and the blob is cached once.

use crate::cluster::*;
use crate::source::Source;
use sha2::Digest;
use std::os::unix::fs::symlink;
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
        [
            "blobs",
            "elsewhere",
            "escape",
            "loop-a",
            "loop-b",
            "magic",
            "snapshots",
            "up"
        ],
        "links are listed as links, wherever they point"
    );
    // Each is a link, its target the source's text: the reader's own
    // kernel resolves it, in the reader's own namespace (a pod's); Weir
    // never reads through one.
    let targets = [
        ("escape", outside.join("secret").display().to_string()),
        ("up", "../../../../../../../..".to_owned()),
        ("elsewhere", outside.display().to_string()),
        ("loop-a", "loop-b".to_owned()),
        ("magic", "/proc/self/root/etc/passwd".to_owned()),
        ("snapshots/r1/model.bin", "../../blobs/sha-1".to_owned()),
    ];
    for (name, target) in &targets {
        let m = std::fs::symlink_metadata(l.join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name} is shown as a link");
        assert_eq!(
            std::fs::read_link(l.join(name))
                .unwrap()
                .display()
                .to_string(),
            *target
        );
        let out = fs_cat(&c, &format!("/l/{name}"));
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "weir fs cat /l/{name} served {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is a symbolic link to"), "{name}: {err}");
    }
    // In-root links read their target's bytes, and the blob is cached
    // once, under its own name, however many links lead to it.
    assert_eq!(
        std::fs::read(l.join("snapshots/r1/model.bin")).unwrap(),
        blob
    );
    assert_eq!(
        std::fs::read(l.join("snapshots/all-blobs/sha-1")).unwrap(),
        blob
    );
    assert_eq!(
        cat_sha(&c, "/l/blobs/sha-1"),
        hex(&sha2::Sha256::digest(&blob))
    );
    assert_eq!(c.status("/l/blobs/sha-1").await.cached_percent, 100);
    let blocks: Vec<String> = c
        .tier_files()
        .into_iter()
        .filter(|f| f.ends_with(".block"))
        .collect();
    assert_eq!(blocks.len(), 1, "one block file: {blocks:?}");

    // A link re-pointed out of the root in the source: the next check
    // shows the new target; Weir still serves nothing through it.
    std::fs::remove_file(root.join("snapshots/r1/model.bin")).unwrap();
    symlink(outside.join("secret"), root.join("snapshots/r1/model.bin")).unwrap();
    let want = outside.join("secret");
    wait("the new target shown", || async {
        std::fs::read_link(l.join("snapshots/r1/model.bin")).is_ok_and(|t| t == want)
    })
    .await;
    let out = fs_cat(&c, "/l/snapshots/r1/model.bin");
    assert!(!out.status.success() && out.stdout.is_empty());
}
