//! `weir fs cat` and `weir fs cp`: file bytes in and out of Weir through
//! the client, with a progress bar on a terminal.

use crate::cli::CliError;
use crate::client::FileSystem;
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_api::WriteType;

pub async fn cat(fs: &Arc<FileSystem>, path: &str) -> Result<(), CliError> {
    let mut reader = fs.open(path).await?;
    let mut out = std::io::stdout().lock();
    reader.copy_to(&mut out, 4 << 20, |_| {}).await?;
    out.flush().map_err(|source| CliError::Io {
        what: "writing to stdout".into(),
        source,
    })?;
    Ok(())
}

/// Copies between Weir and this machine; `file:` marks the local side.
pub async fn cp(
    fs: &Arc<FileSystem>,
    src: &str,
    dst: &str,
    wt: Option<WriteType>,
    block_size: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    let started = Instant::now();
    let bytes = match (src.strip_prefix("file:"), dst.strip_prefix("file:")) {
        (Some(local), None) => {
            copy_in(fs, Path::new(local), dst, wt, block_size.unwrap_or(0)).await?
        }
        (None, Some(local)) => {
            let mut reader = fs.open(src).await?;
            let mut progress = Progress::new(reader.len());
            let file = std::fs::File::create(local).map_err(|source| CliError::Io {
                what: format!("creating {local}"),
                source,
            })?;
            let mut out = std::io::BufWriter::with_capacity(4 << 20, file);
            let n = reader
                .copy_to(&mut out, 4 << 20, |done| progress.update(done))
                .await?;
            out.flush().map_err(|source| CliError::Io {
                what: format!("writing {local}"),
                source,
            })?;
            progress.finish();
            n
        }
        _ => {
            return Err(CliError::Usage(
                "exactly one side of cp is local, marked file: (file:/tmp/a)".into(),
            ));
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!("{}", json!({"bytes": bytes, "seconds": secs}));
    } else {
        eprintln!(
            "copied {bytes} bytes in {secs:.2} s ({:.1} MiB/s)",
            bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

async fn copy_in(
    fs: &Arc<FileSystem>,
    local: &Path,
    dst: &str,
    mode: Option<WriteType>,
    block_size: u64,
) -> Result<u64, CliError> {
    let io = |source| CliError::Io {
        what: format!("reading {}", local.display()),
        source,
    };
    let mut file = std::fs::File::open(local).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let mut progress = Progress::new(total);
    let mut writer = fs.create_with(dst, mode, block_size).await?;
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                writer.abort().await;
                return Err(io(e));
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = writer.write(&buf[..n]).await {
            writer.abort().await;
            return Err(e.into());
        }
        progress.update(writer.written());
    }
    let info = writer.close().await?;
    progress.finish();
    Ok(info.length)
}

/// A one-line progress bar on stderr, drawn only on a terminal.
struct Progress {
    total: u64,
    started: Instant,
    drawn: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self {
            total,
            started: Instant::now(),
            drawn: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: u64) {
        if !self.tty || self.drawn.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.drawn = Instant::now();
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let rate = done as f64 / (1 << 20) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r[{}{}] {:>5.1}% {:.1} MiB/s ",
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            frac * 100.0,
            rate
        );
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
