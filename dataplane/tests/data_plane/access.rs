//! Who may read through a FUSE mount: with `--allow-other` every user gets
//! in and the kernel checks each file's mode, which is the under-storage's
//! own for a local directory; without it only the mounting user does.

use crate::cluster::*;
use crate::source::Source;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use weir::proto::master as pb;

/// `args` run as uid and gid 65534 (nobody; std drops root's supplementary
/// groups with the uid): its stdout, or its stderr.
fn as_nobody(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t80_other_users_read_what_the_modes_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::local(tmp.path());
    let Source::Local(src) = &source else {
        unreachable!("a local source")
    };
    std::fs::create_dir(src.join("private")).unwrap();
    let files = [
        ("open.txt", 0o644),
        ("frozen.txt", 0o444),
        ("secret.txt", 0o600),
        ("private/inner.txt", 0o644),
        ("tool.sh", 0o4755),
    ];
    for (name, mode) in files {
        let path = src.join(name);
        std::fs::write(&path, format!("{name}\n")).unwrap();
        chmod(&path, mode);
    }
    chmod(&src.join("private"), 0o700);
    let mut c = Cluster::start(1, "64MiB").await;
    // Temporary directories are 0700: nobody must reach the mount points.
    chmod(c.dir.path(), 0o755);
    source
        .mount(
            &c,
            "/l",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            300,
        )
        .await;
    let open = c.fuse("/", &["--allow-other"]).await;
    let closed = c.fuse("/", &[]).await;

    let read =
        |mp: &Path, name: &str| as_nobody("cat", &[&mp.join("l").join(name).to_string_lossy()]);
    assert_eq!(read(&open, "open.txt"), Ok("open.txt\n".into()));
    assert_eq!(read(&open, "frozen.txt"), Ok("frozen.txt\n".into()));
    for denied in ["secret.txt", "private/inner.txt"] {
        let err = read(&open, denied).expect_err(denied);
        assert!(err.contains("Permission denied"), "{denied}: {err}");
    }
    let listed = as_nobody("ls", &[&open.join("l").to_string_lossy()]).unwrap();
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["frozen.txt", "open.txt", "private", "secret.txt", "tool.sh"]
    );
    let mode = |name: &str| {
        std::fs::metadata(open.join("l").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("open.txt"), 0o644);
    assert_eq!(mode("frozen.txt"), 0o444);
    assert_eq!(mode("secret.txt"), 0o600);
    assert_eq!(mode("private"), 0o700);
    assert_eq!(mode("tool.sh"), 0o4755, "shown as the store keeps it");
    // ...and never honoured: the mount is nosuid (and nodev).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let options = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| Path::new(f[4]) == open)
        .map(|f| f[5].to_owned())
        .expect("the mount in mountinfo");
    for needed in ["nosuid", "nodev"] {
        assert!(
            options.split(',').any(|o| o == needed),
            "{needed}: {options}"
        );
    }

    // A chmod in the under-storage reaches the mount with the next check
    // of the path (a new FUSE lookup after the attribute TTL).
    chmod(&src.join("secret.txt"), 0o644);
    wait("the chmod seen through FUSE", || async {
        read(&open, "secret.txt").is_ok()
    })
    .await;

    // Without --allow-other the mount is its owner's alone.
    let err = read(&closed, "open.txt").expect_err("another user is kept out");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        std::fs::read_to_string(closed.join("l/open.txt")).unwrap(),
        "open.txt\n",
        "root, who mounted it, reads"
    );
}
