//! The `weir` binary as a user runs it.

use std::process::Command;

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

#[test]
fn check_path_normalises_good_paths_and_names_bad_ones() {
    let ok = weir(&["check-path", "/data/train/", "/"]);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "/data/train\n/\n");

    let bad = weir(&["check-path", "/data/../etc", "relative"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("\"/data/../etc\" contains `.` or `..`"),
        "{stderr}"
    );
    assert!(stderr.contains("\"relative\" is not absolute"), "{stderr}");
    assert!(stderr.contains("error: 2 invalid path(s)"), "{stderr}");
}
