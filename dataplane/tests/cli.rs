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

fn mounted(mount_point: &std::path::Path) -> bool {
    let target = mount_point.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*target))
}

#[test]
fn local_up_serves_a_directory_through_fuse_and_down_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/hello.txt"), b"hello from weir local").unwrap();
    let state = dir.path().join("state");
    let mnt = dir.path().join("mnt");
    let port = |()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let (mport, wport) = (port(()), port(()));
    let up = weir(&[
        "local",
        "up",
        data.to_str().unwrap(),
        "--mount-point",
        mnt.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--mem",
        "64MiB",
        "--master-port",
        &mport,
        "--worker-port",
        &wport,
    ]);
    let down = || weir(&["local", "down", "--state-dir", state.to_str().unwrap()]);
    if !up.status.success() {
        let _ = down();
        panic!("local up: {}", String::from_utf8_lossy(&up.stderr));
    }
    assert!(String::from_utf8_lossy(&up.stdout).contains("Weir is up"));
    let read = std::fs::read(mnt.join("sub/hello.txt"));
    let again = weir(&[
        "local",
        "up",
        data.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let pids: Vec<String> = ["master", "worker", "fuse"]
        .iter()
        .map(|r| std::fs::read_to_string(state.join(format!("{r}.pid"))).unwrap())
        .collect();
    let out = down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read.unwrap(), b"hello from weir local");
    assert!(!again.status.success(), "a second up must refuse");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
    assert!(!mounted(&mnt), "still mounted after down");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
                || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still running"
        );
    }
    assert!(!std::path::Path::new(&format!("/dev/shm/weir-local-{mport}")).exists());
}
