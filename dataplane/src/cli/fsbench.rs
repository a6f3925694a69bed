//! `weir bench fs DIR`: a file system benchmark against any mounted path
//! (a Weir FUSE mount, another file system's mount, a local directory), so
//! that Weir and what it is compared with are measured by the same code.
//! Sequential and random reads and writes with 1..N threads and a chosen
//! request size, and small-file create / stat / read; each prints
//! throughput, operations per second and latency percentiles.
//!
//! Plain blocking threads, not async tasks: each thread is one reader in a
//! pod, and the latency of a request is the latency a program sees.

use super::CliError;
use super::worker::parse_size;
use clap::{Args, ValueEnum};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Each thread writes one file of `--file-size` (new files only, as
    /// a write-once file system takes them).
    Write,
    /// Each thread reads its share of the files start to end.
    SeqRead,
    /// Every thread reads random request-aligned ranges of any file for
    /// `--seconds`.
    RandRead,
    /// Each thread creates `--small-files` files, then stats, then reads
    /// them.
    SmallFiles,
}

#[derive(Debug, Args)]
pub struct FsBenchArgs {
    /// The directory to benchmark (a mount point or a directory in one).
    pub dir: PathBuf,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "write,seq-read,rand-read,small-files"
    )]
    pub phases: Vec<Phase>,
    /// Thread counts; every phase runs once per count.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub threads: Vec<usize>,
    /// Request sizes of reads and writes; every phase but small-files runs
    /// once per size.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "1MiB")]
    pub request_sizes: Vec<u64>,
    /// Size of the file each thread writes.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub file_size: u64,
    /// Read the regular files already below DIR instead of writing any:
    /// data cached ahead (a DataLoad, a warm-up) read as a workload would.
    #[arg(long)]
    pub existing: bool,
    /// How long each random-read measurement runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Small files each thread creates.
    #[arg(long, default_value_t = 100)]
    pub small_files: usize,
    #[arg(long, value_parser = parse_size, default_value = "128KiB")]
    pub small_file_size: u64,
    /// Drop the kernel's page cache before each read measurement, so reads
    /// reach the file system (needs root).
    #[arg(long)]
    pub drop_caches: bool,
    /// One JSON object per measurement instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured cell of the benchmark.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub phase: Phase,
    /// `write`, `read`, `create`, `stat`: what one counted operation is.
    pub op: &'static str,
    pub threads: usize,
    pub request_bytes: u64,
    pub ops: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_s: f64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What the threads of one cell did: wall time, every operation's latency,
/// bytes moved.
struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
    bytes: u64,
}

impl Measurement {
    fn new(phase: Phase, op: &'static str, threads: usize, request_bytes: u64, run: Run) -> Self {
        let Run {
            elapsed,
            mut latencies,
            bytes,
        } = run;
        latencies.sort_unstable();
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let at = |p: f64| -> u64 {
            if latencies.is_empty() {
                return 0;
            }
            let i = ((latencies.len() - 1) as f64 * p).round() as usize;
            latencies[i].as_micros() as u64
        };
        Measurement {
            phase,
            op,
            threads,
            request_bytes,
            ops: latencies.len() as u64,
            bytes,
            seconds,
            mib_per_s: bytes as f64 / (1 << 20) as f64 / seconds,
            ops_per_s: latencies.len() as f64 / seconds,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// Runs `work(thread)` on `threads` threads at once and returns the wall
/// time with each thread's latencies and bytes merged.
fn parallel<F>(threads: usize, work: F) -> Result<Run, CliError>
where
    F: Fn(usize) -> Result<(Vec<Duration>, u64), CliError> + Sync,
{
    let started = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                s.spawn(move || work(t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a benchmark thread panicked"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for r in results {
        let (l, b) = r?;
        latencies.extend(l);
        bytes += b;
    }
    Ok(Run {
        elapsed,
        latencies,
        bytes,
    })
}

/// Reads `path` start to end in `request` sized reads.
fn read_whole(path: &Path, request: u64, latencies: &mut Vec<Duration>) -> Result<u64, CliError> {
    let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut buf = vec![0u8; request as usize];
    let mut offset = 0u64;
    loop {
        let t = Instant::now();
        let n = file
            .read_at(&mut buf, offset)
            .map_err(io_err(format!("reading {} at {offset}", path.display())))?;
        latencies.push(t.elapsed());
        if n == 0 {
            return Ok(offset);
        }
        offset += n as u64;
    }
}

/// A small, seedable generator: the benchmark needs spread offsets, not
/// statistical quality, and the same sequence on every file system.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn drop_page_cache(enabled: bool) -> Result<(), CliError> {
    if !enabled {
        return Ok(());
    }
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(io_err("dropping the page cache"))
}

fn seq_read(
    files: &[(PathBuf, u64)],
    threads: usize,
    request: u64,
) -> Result<Measurement, CliError> {
    let run = parallel(threads, |t| {
        let mut latencies = Vec::new();
        let mut bytes = 0;
        for (path, _) in files.iter().skip(t).step_by(threads) {
            bytes += read_whole(path, request, &mut latencies)?;
        }
        Ok((latencies, bytes))
    })?;
    Ok(Measurement::new(
        Phase::SeqRead,
        "read",
        threads,
        request,
        run,
    ))
}

fn rand_read(
    files: &[(PathBuf, u64)],
    threads: usize,
    request: u64,
    seconds: f64,
) -> Result<Measurement, CliError> {
    let readable: Vec<_> = files.iter().filter(|(_, len)| *len >= request).collect();
    if readable.is_empty() {
        return Err(CliError::Usage(format!(
            "no file is at least one request ({request} bytes) long"
        )));
    }
    let budget = Duration::from_secs_f64(seconds);
    let run = parallel(threads, |t| {
        let handles = readable
            .iter()
            .map(|(p, len)| {
                File::open(p)
                    .map(|f| (f, *len))
                    .map_err(io_err(format!("opening {}", p.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut rng =
            XorShift(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let mut buf = vec![0u8; request as usize];
        let mut latencies = Vec::new();
        let mut bytes = 0;
        let started = Instant::now();
        while started.elapsed() < budget {
            let (file, len) = &handles[(rng.next() % handles.len() as u64) as usize];
            let offset = rng.next() % (len / request) * request;
            let at = Instant::now();
            let n = file
                .read_at(&mut buf, offset)
                .map_err(io_err(format!("random read at {offset}")))?;
            latencies.push(at.elapsed());
            bytes += n as u64;
        }
        Ok((latencies, bytes))
    })?;
    Ok(Measurement::new(
        Phase::RandRead,
        "read",
        threads,
        request,
        run,
    ))
}

fn write_files(
    dir: &Path,
    threads: usize,
    request: u64,
    file_size: u64,
) -> Result<(Measurement, Vec<(PathBuf, u64)>), CliError> {
    let paths: Vec<PathBuf> = (0..threads)
        .map(|t| dir.join(format!("big-{threads}x{request}-{t}")))
        .collect();
    let run = parallel(threads, |t| {
        let path = &paths[t];
        let mut file =
            File::create_new(path).map_err(io_err(format!("creating {}", path.display())))?;
        // Bytes that no file system can compress or de-duplicate away.
        let mut rng = XorShift(t as u64 * 7919 + 17);
        let buf: Vec<u8> = (0..request).map(|_| rng.next() as u8).collect();
        let mut latencies = Vec::new();
        let mut written = 0;
        while written < file_size {
            let n = request.min(file_size - written) as usize;
            let at = Instant::now();
            file.write_all(&buf[..n])
                .map_err(io_err(format!("writing {}", path.display())))?;
            latencies.push(at.elapsed());
            written += n as u64;
        }
        // A file is written when its close has returned: for Weir that is
        // when the file is committed.
        let at = Instant::now();
        drop(file);
        latencies.push(at.elapsed());
        Ok((latencies, written))
    })?;
    let measured = Measurement::new(Phase::Write, "write", threads, request, run);
    Ok((
        measured,
        paths.into_iter().map(|p| (p, file_size)).collect(),
    ))
}

fn small_files(
    dir: &Path,
    threads: usize,
    count: usize,
    size: u64,
    drop_caches: bool,
) -> Result<Vec<Measurement>, CliError> {
    let dirs: Vec<PathBuf> = (0..threads)
        .map(|t| dir.join(format!("small-{threads}-{t}")))
        .collect();
    for d in &dirs {
        std::fs::create_dir(d).map_err(io_err(format!("creating {}", d.display())))?;
    }
    let name = |t: usize, i: usize| dirs[t].join(format!("f{i}"));
    let content: Vec<u8> = {
        let mut rng = XorShift(size | 1);
        (0..size).map(|_| rng.next() as u8).collect()
    };
    let run = parallel(threads, |t| {
        let mut latencies = Vec::with_capacity(count);
        for i in 0..count {
            let path = name(t, i);
            let at = Instant::now();
            let mut file =
                File::create_new(&path).map_err(io_err(format!("creating {}", path.display())))?;
            file.write_all(&content)
                .map_err(io_err(format!("writing {}", path.display())))?;
            drop(file);
            latencies.push(at.elapsed());
        }
        Ok((latencies, count as u64 * size))
    })?;
    let create = Measurement::new(Phase::SmallFiles, "create", threads, size, run);
    drop_page_cache(drop_caches)?;
    let run = parallel(threads, |t| {
        let mut latencies = Vec::with_capacity(count);
        for i in 0..count {
            let path = name(t, i);
            let at = Instant::now();
            let meta =
                std::fs::metadata(&path).map_err(io_err(format!("stat {}", path.display())))?;
            latencies.push(at.elapsed());
            if meta.len() != size {
                return Err(CliError::Usage(format!(
                    "{} is {} bytes, {size} were written",
                    path.display(),
                    meta.len()
                )));
            }
        }
        Ok((latencies, 0))
    })?;
    let stat = Measurement::new(Phase::SmallFiles, "stat", threads, size, run);
    drop_page_cache(drop_caches)?;
    let run = parallel(threads, |t| {
        let mut latencies = Vec::with_capacity(count);
        let mut bytes = 0;
        for i in 0..count {
            let path = name(t, i);
            let at = Instant::now();
            let data =
                std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
            latencies.push(at.elapsed());
            if data != content {
                return Err(CliError::Usage(format!(
                    "{} does not hold what was written",
                    path.display()
                )));
            }
            bytes += data.len() as u64;
        }
        Ok((latencies, bytes))
    })?;
    let read = Measurement::new(Phase::SmallFiles, "read", threads, size, run);
    Ok(vec![create, stat, read])
}

/// The regular files below `dir`, with their sizes, in a stable order.
fn existing_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>, CliError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(format!("listing {}", d.display())))? {
            let entry = entry.map_err(io_err(format!("listing {}", d.display())))?;
            let meta = entry
                .metadata()
                .map_err(io_err(format!("stat {}", entry.path().display())))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() && meta.len() > 0 {
                found.push((entry.path(), meta.len()));
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(CliError::Usage(format!(
            "{} holds no non-empty file",
            dir.display()
        )));
    }
    Ok(found)
}

/// Runs every phase, thread count and request size `args` asks for and
/// returns the measurements in the order they ran. Files it writes go to a
/// directory of its own below `args.dir`, removed at the end.
pub fn run_fs_bench(
    args: &FsBenchArgs,
    mut report: impl FnMut(&Measurement),
) -> Result<Vec<Measurement>, CliError> {
    if args.threads.is_empty() || args.threads.contains(&0) {
        return Err(CliError::Usage(
            "--threads: every count must be at least 1".into(),
        ));
    }
    if args.request_sizes.contains(&0) {
        return Err(CliError::Usage(
            "--request-sizes: a request must be at least 1 byte".into(),
        ));
    }
    let mut all = Vec::new();
    let mut keep = |m: Measurement, all: &mut Vec<Measurement>| {
        report(&m);
        all.push(m);
    };
    if args.existing {
        let files = existing_files(&args.dir)?;
        for phase in &args.phases {
            for &threads in &args.threads {
                for &request in &args.request_sizes {
                    drop_page_cache(args.drop_caches)?;
                    let m = match phase {
                        Phase::SeqRead => seq_read(&files, threads, request)?,
                        Phase::RandRead => rand_read(&files, threads, request, args.seconds)?,
                        Phase::Write | Phase::SmallFiles => {
                            return Err(CliError::Usage(format!(
                                "--existing reads only; {phase:?} writes"
                            )));
                        }
                    };
                    keep(m, &mut all);
                }
            }
        }
        return Ok(all);
    }
    let work = args.dir.join(format!("weir-bench-{}", std::process::id()));
    std::fs::create_dir(&work).map_err(io_err(format!("creating {}", work.display())))?;
    let result = (|| {
        for &threads in &args.threads {
            for &request in &args.request_sizes {
                let mut files = Vec::new();
                if args.phases.contains(&Phase::Write)
                    || args.phases.contains(&Phase::SeqRead)
                    || args.phases.contains(&Phase::RandRead)
                {
                    let (m, written) = write_files(&work, threads, request, args.file_size)?;
                    files = written;
                    if args.phases.contains(&Phase::Write) {
                        keep(m, &mut all);
                    }
                }
                if args.phases.contains(&Phase::SeqRead) {
                    drop_page_cache(args.drop_caches)?;
                    keep(seq_read(&files, threads, request)?, &mut all);
                }
                if args.phases.contains(&Phase::RandRead) {
                    drop_page_cache(args.drop_caches)?;
                    keep(rand_read(&files, threads, request, args.seconds)?, &mut all);
                }
            }
            if args.phases.contains(&Phase::SmallFiles) {
                for m in small_files(
                    &work,
                    threads,
                    args.small_files,
                    args.small_file_size,
                    args.drop_caches,
                )? {
                    keep(m, &mut all);
                }
            }
        }
        Ok(())
    })();
    let cleaned =
        std::fs::remove_dir_all(&work).map_err(io_err(format!("removing {}", work.display())));
    result.and(cleaned).map(|()| all)
}

fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub fn fs(args: FsBenchArgs) -> Result<(), CliError> {
    if !args.json {
        println!("| phase | op | threads | request | MiB/s | ops/s | p50 µs | p99 µs | max µs |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    let json = args.json;
    run_fs_bench(&args, |m| {
        if json {
            println!(
                "{}",
                serde_json::to_string(m).expect("a measurement serialises")
            );
        } else {
            println!(
                "| {:?} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
                m.phase,
                m.op,
                m.threads,
                size_label(m.request_bytes),
                m.mib_per_s,
                m.ops_per_s,
                m.p50_us,
                m.p99_us,
                m.max_us
            );
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> FsBenchArgs {
        FsBenchArgs {
            dir: dir.to_path_buf(),
            phases: vec![
                Phase::Write,
                Phase::SeqRead,
                Phase::RandRead,
                Phase::SmallFiles,
            ],
            threads: vec![1, 3],
            request_sizes: vec![4096, 65536],
            file_size: 300_000,
            existing: false,
            seconds: 0.05,
            small_files: 7,
            small_file_size: 1000,
            drop_caches: false,
            json: false,
        }
    }

    #[test]
    fn every_cell_counts_what_it_moved_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let all = run_fs_bench(&args(dir.path()), |_| {}).unwrap();
        // 2 thread counts x (2 sizes x (write, seq, rand) + create, stat, read).
        assert_eq!(all.len(), 2 * (2 * 3 + 3));
        for m in &all {
            match (m.phase, m.op) {
                (Phase::Write, _) | (Phase::SeqRead, _) => {
                    assert_eq!(m.bytes, m.threads as u64 * 300_000, "{m:?}")
                }
                (Phase::RandRead, _) => {
                    assert!(m.ops > 0, "{m:?}");
                    assert_eq!(m.bytes, m.ops * m.request_bytes, "{m:?}");
                }
                (Phase::SmallFiles, "stat") => assert_eq!(m.bytes, 0),
                (Phase::SmallFiles, _) => assert_eq!(m.bytes, m.threads as u64 * 7 * 1000, "{m:?}"),
            }
            if m.phase == Phase::SmallFiles {
                assert_eq!(m.ops, m.threads as u64 * 7, "{m:?}");
            }
            assert!(m.p50_us <= m.p99_us && m.p99_us <= m.max_us, "{m:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn existing_files_are_read_whole_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![2u8; 5_000]).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let mut a = args(dir.path());
        a.existing = true;
        a.phases = vec![Phase::SeqRead, Phase::RandRead];
        a.request_sizes = vec![4096];
        let all = run_fs_bench(&a, |_| {}).unwrap();
        assert_eq!(all[0].bytes, 15_000);
        assert_eq!(all[1].bytes, 15_000);
        assert!(
            all[2..]
                .iter()
                .all(|m| m.phase == Phase::RandRead && m.ops > 0)
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

        a.phases = vec![Phase::Write];
        let err = run_fs_bench(&a, |_| {}).unwrap_err().to_string();
        assert!(err.contains("--existing reads only"), "{err}");
        a.phases = vec![Phase::SeqRead];
        a.dir = dir.path().join("nothing-here");
        std::fs::create_dir(&a.dir).unwrap();
        let err = run_fs_bench(&a, |_| {}).unwrap_err().to_string();
        assert!(err.contains("holds no non-empty file"), "{err}");
    }

    #[test]
    fn a_random_read_larger_than_every_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 100]).unwrap();
        let mut a = args(dir.path());
        a.existing = true;
        a.phases = vec![Phase::RandRead];
        a.request_sizes = vec![4096];
        let err = run_fs_bench(&a, |_| {}).unwrap_err().to_string();
        assert!(err.contains("at least one request"), "{err}");
    }
}
