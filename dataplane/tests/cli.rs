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
    // Below the ephemeral range, so no outgoing connection takes one
    // before the processes bind it (the worker's metrics take port + 1).
    let port = |()| weir_testkit::free_local_port().to_string();
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

/// The loopback baseline of the data-path benchmark sends every byte and
/// ends, over one connection and over several, for a file whose size no
/// chunk or stripe divides; a missing file is an error that says so.
#[test]
fn tcp_loopback_sends_the_whole_file_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    let len: usize = (9 << 20) + 12345;
    std::fs::write(&file, (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    for connections in ["1", "3"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "bench",
                "tcp-loopback",
                file.to_str().unwrap(),
                "--chunk",
                "1MiB",
            ])
            .args(["--connections", connections])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("tcp-loopback over {connections} connection(s) never ended");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{connections} connection(s)");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["bytes"], len as u64, "{connections} connection(s)");
        assert!(report["mib_per_s"].as_f64().unwrap() > 0.0);
    }
    let missing = weir(&["bench", "tcp-loopback", "/nonexistent/weir-file"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("opening the file"), "{stderr}");
}
