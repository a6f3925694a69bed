//! A FUSE restart under readers.

use crate::cluster::*;
use crate::common::is_mounted;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the readers of t60 saw: operations done, and every failure.
#[derive(Default)]
struct ReadLog {
    big_passes: std::sync::atomic::AtomicU64,
    dir_rounds: std::sync::atomic::AtomicU64,
    /// The longest a single read of `big` took, in milliseconds.
    longest_read_ms: std::sync::atomic::AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// Reads every MiB of `big` through one descriptor opened once, checking
/// each, and drops the file's pages after each pass so the next pass asks
/// the FUSE process again.
fn read_big_forever(
    big: PathBuf,
    len: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<ReadLog>,
) {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;
    let pattern = Pattern::new(60);
    let file = std::fs::File::open(&big).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::SeqCst) {
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            let started = Instant::now();
            let read = file.read_exact_at(&mut buf[..n], offset);
            log.longest_read_ms
                .fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
            match read {
                Ok(()) if buf[..n] == pattern.bytes(offset, n)[..] => {}
                Ok(()) => log
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("wrong bytes at {offset}")),
                Err(e) => log
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("read at {offset}: {e}")),
            }
            offset += n as u64;
        }
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        log.big_passes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Lists `dir` and reads each small file in it, over and over.
fn read_dir_forever(dir: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>, log: Arc<ReadLog>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        let names = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(e),
        };
        match names {
            Ok(names) if names.len() == 20 => {
                for name in names {
                    let i: usize = name[1..].parse().unwrap();
                    match std::fs::read(dir.join(&name)) {
                        Ok(b) if b == small_file(i) => {}
                        Ok(_) => log
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("wrong bytes in {name}")),
                        Err(e) => log
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("read {name}: {e}")),
                    }
                }
            }
            Ok(names) => log
                .failures
                .lock()
                .unwrap()
                .push(format!("listed {} entries", names.len())),
            Err(e) => log.failures.lock().unwrap().push(format!("list: {e}")),
        }
        log.dir_rounds.fetch_add(1, Ordering::SeqCst);
    }
}

fn small_file(i: usize) -> Vec<u8> {
    format!("small file {i}\n").repeat(1000 + i).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t60_a_fuse_restart_under_readers_is_a_pause_not_an_error() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ufs = tempfile::tempdir().unwrap();
    let big_len = BLOCK + (32 << 20);
    let mut big = vec![0u8; big_len as usize];
    Pattern::new(60).fill(0, &mut big);
    std::fs::write(ufs.path().join("big.bin"), &big).unwrap();
    drop(big);
    std::fs::create_dir(ufs.path().join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(ufs.path().join(format!("d/f{i}")), small_file(i)).unwrap();
    }
    let mut c = Cluster::start(1, "512MiB").await;
    c.mount_local("/u", ufs.path(), true).await;

    // The holder (the CSI plugin's part) in this process: it keeps the mount
    // while `in_use` says a volume needs it.
    let in_use = Arc::new(AtomicBool::new(true));
    let flag = in_use.clone();
    let holder = weir_handover::Holder::new(move |_| flag.load(Ordering::SeqCst));
    let socket = c.dir.path().join("fd-holder.sock");
    holder.listen(&socket).unwrap();
    let holder_arg = format!("--fd-holder={}", socket.display());
    let mnt = c.fuse("/u", &[&holder_arg]).await;
    let held_generation = |g: u64| {
        let held = holder.held();
        held.len() == 1 && held[0].generation == g && held[0].mount_point == mnt
    };
    wait("the descriptor lodged", || async { held_generation(0) }).await;

    let successor = c.fuses[0].0.prepare_restart();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(ReadLog::default());
    let readers = [
        std::thread::spawn({
            let (big, stop, log) = (mnt.join("big.bin"), stop.clone(), log.clone());
            move || read_big_forever(big, big_len, stop, log)
        }),
        std::thread::spawn({
            let (dir, stop, log) = (mnt.join("d"), stop.clone(), log.clone());
            move || read_dir_forever(dir, stop, log)
        }),
    ];
    let progress = |log: &ReadLog| {
        (
            log.big_passes.load(Ordering::SeqCst),
            log.dir_rounds.load(Ordering::SeqCst),
        )
    };
    wait("the readers to get going", || async {
        let (big, dir) = progress(&log);
        big >= 1 && dir >= 2
    })
    .await;

    // SIGKILL: nothing is unmounted; readers block rather than fail.
    c.fuses[0].0.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(is_mounted(&mnt), "the mount outlives its FUSE process");
    assert!(held_generation(0));
    let before = progress(&log);
    c.fuses[0].0.restart_prepared(successor);
    wait("the new FUSE process to take the mount over", || async {
        held_generation(1)
    })
    .await;
    wait("the readers to go on", || async {
        let now = progress(&log);
        now.0 >= before.0 + 2 && now.1 >= before.1 + 3
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    let failures = log.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "readers failed across the restart: {failures:?}\n{}",
        c.fuses[0].0.log_tail()
    );
    eprintln!(
        "the longest read across the restart took {} ms",
        log.longest_read_ms.load(Ordering::SeqCst)
    );
    assert!(
        std::fs::read_to_string(&c.fuses[0].0.log)
            .unwrap()
            .contains("took over the live mount"),
        "{}",
        c.fuses[0].0.log_tail()
    );

    // SIGTERM while a volume uses the mount: left mounted for the next one.
    c.fuses[0].0.terminate();
    assert!(is_mounted(&mnt), "kept while in use");
    c.fuses[0].0.restart();
    wait("a second takeover", || async { held_generation(2) }).await;
    assert_eq!(
        std::fs::read(mnt.join("d/f7")).unwrap(),
        small_file(7),
        "served after the second takeover"
    );
    // SIGTERM once nothing uses it: unmounted, and the holder lets go.
    in_use.store(false, Ordering::SeqCst);
    c.fuses[0].0.terminate();
    assert!(!is_mounted(&mnt), "unmounted when no volume uses it");
    assert!(holder.held().is_empty());
}
