//! The public POSIX suite (pjdfstest, the crates.io port) run through FUSE
//! in a writable local-directory mount and in a writable S3 mount (two
//! tests, so they run side by side). Every
//! failure must be listed in `posix-expected/<store>.txt` with the README
//! row that explains it; a failure not listed fails the test, and so does
//! a listed one that passes (the lists only shrink). On S3 every listed
//! failure must be a refusal with an errno, never a call that returned 0
//! and did nothing.

use crate::cluster::*;
use crate::source::Source;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use weir::proto::master as pb;

/// The suite's settings: short naps (Weir keeps milliseconds), no
/// remounting, and the two users it switches to (made by the test bed's
/// install script).
const CONFIG: &str = r#"
[features]
posix_fallocate = {}

[settings]
naptime = 0.05
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

fn pjdfstest() -> PathBuf {
    let bin = std::env::var_os("WEIR_PJDFSTEST").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/weir/pjdfstest/bin/pjdfstest")
        },
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "{} is missing: e2e/cluster/install.sh installs it",
        bin.display()
    );
    bin
}

/// Each failed case's name and the first line of what it said.
fn run_suite(config: &Path, dir: &Path) -> (usize, BTreeMap<String, String>) {
    let out = Command::new(pjdfstest())
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut passed = 0;
    let mut failed = BTreeMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(result), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !name.contains("::") {
            continue;
        }
        match result {
            "ok" => passed += 1,
            "FAILED" => {
                let said = lines
                    .peek()
                    .map(|l| l.trim().to_owned())
                    .unwrap_or_default();
                failed.insert(name.to_owned(), said);
            }
            _ => {}
        }
    }
    assert!(
        passed > 0,
        "the suite ran nothing in {} ({}):\n{text}",
        dir.display(),
        out.status
    );
    (passed, failed)
}

/// `posix-expected/<store>.txt`: a case per line, `#` comments.
fn expected(store: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data_plane/posix-expected")
        .join(format!("{store}.txt"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Fails on a failure not listed and on a listed case that passed.
fn check(store: &str, passed: usize, failed: &BTreeMap<String, String>) {
    let listed = expected(store);
    let new: Vec<String> = failed
        .iter()
        .filter(|(name, _)| !listed.contains(name))
        .map(|(name, said)| format!("{name}: {said}"))
        .collect();
    let fixed: Vec<&String> = listed.iter().filter(|l| !failed.contains_key(*l)).collect();
    let total = passed + failed.len();
    eprintln!(
        "pjdfstest on {store}: {passed} of {total} cases passed ({:.1}%), {} listed failures",
        100.0 * passed as f64 / total as f64,
        failed.len()
    );
    assert!(
        new.is_empty(),
        "{store}: failures not listed:\n{}",
        new.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "{store}: listed failures that pass now; take them off the list: {fixed:?}"
    );
}

/// A cluster with a writable mount of `source` at `/m`, and a FUSE mount
/// of it that every user may enter; the directory the suite runs in.
async fn mounted(tmp: &Path, source: &Source) -> (Cluster, PathBuf) {
    let mut c = Cluster::start(1, "1GiB").await;
    source
        .mount(
            &c,
            "/m",
            pb::WriteType::CacheThrough,
            pb::SyncMode::Interval,
            60_000,
        )
        .await;
    // The suite switches users: they must reach the mount point.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Attributes are not cached (the suite checks every timestamp right
    // after each call).
    let mp = c.fuse("/", &["--allow-other", "--attr-ttl-ms=0"]).await;
    let work = mp.join("m/work");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o777)
        .create(&work)
        .unwrap();
    // Open to every user where the store keeps modes (S3 refuses a chmod).
    if let Source::Local(_) = source {
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    (c, work)
}

fn config(tmp: &Path) -> PathBuf {
    let config = tmp.join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t84_the_posix_suite_on_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::local(tmp.path());
    let (mut c, work) = mounted(tmp.path(), &source).await;
    let (passed, failed) = run_suite(&config(tmp.path()), &work);
    check("local", passed, &failed);
    let _ = &mut c;
}

/// On S3 a failure is a refusal (the call fails with an errno), a time a
/// store without directories cannot move, or a row of the table that
/// holds for every store; never a call that succeeded and left the wrong
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t85_the_posix_suite_on_s3_refuses_what_s3_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::s3(tmp.path(), "posix").await;
    let (mut c, work) = mounted(tmp.path(), &source).await;
    let (passed, failed) = run_suite(&config(tmp.path()), &work);
    let refusal = |said: &str| {
        said.contains("EPERM")
            || said.contains("EOPNOTSUPP")
            || said.contains("Operation not permitted")
            || (said.starts_with("assertion failed: ")
                && !said.contains("==")
                && !said.contains("is_err"))
    };
    let wrong: Vec<String> = failed
        .iter()
        .filter(|(name, said)| {
            !refusal(said) && !said.starts_with("Timestamps") && !expected("local").contains(name)
        })
        .map(|(name, said)| format!("{name}: {said}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "S3 failures that are neither refusals nor listed for every store:\n{}",
        wrong.join("\n")
    );
    check("s3", passed, &failed);
    let _ = &mut c;
}
