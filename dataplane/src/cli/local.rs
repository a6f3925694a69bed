//! `weir local up|down`: one master, one worker (MEM tier) and a FUSE mount
//! on this machine over one under-storage location, as background
//! processes whose pids and logs live in a state directory.

use super::CliError;
use crate::proto::master as pb;
use clap::{Args, Subcommand};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_api::MasterClient;

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start a master, a worker and a FUSE mount over UFS.
    Up(UpArgs),
    /// Stop them (unmounting first) and remove the MEM tier.
    Down {
        #[arg(long, default_value = "/tmp/weir-local")]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// What to cache: a local directory, or a URI (s3://bucket/prefix,
    /// https://host/path, local:///dir).
    pub ufs: String,
    #[arg(long, default_value = "/mnt/weir")]
    pub mount_point: PathBuf,
    #[arg(long, default_value = "/tmp/weir-local")]
    pub state_dir: PathBuf,
    /// Size of the worker's MEM tier (in /dev/shm).
    #[arg(long, default_value = "1GiB", value_parser = super::worker::parse_size)]
    pub mem: u64,
    #[arg(long, default_value_t = 19200)]
    pub master_port: u16,
    /// The worker's data port (its metrics port is the next one).
    #[arg(long, default_value_t = 19300)]
    pub worker_port: u16,
    /// Under-storage options as key=value (endpoint, region, ...).
    #[arg(long = "option", value_parser = super::fs::parse_kv)]
    pub options: Vec<(String, String)>,
    /// Credentials as key=/file/holding/the/secret.
    #[arg(long = "credential-file", value_parser = super::fs::parse_kv)]
    pub credential_files: Vec<(String, String)>,
    /// When known paths are checked against the under-storage again:
    /// `never`, `always`, or an interval (`30s`).
    #[arg(long, default_value = "60s")]
    pub sync: weir_api::SyncPolicy,
}

const ROLES: [&str; 3] = ["fuse", "worker", "master"];

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn pid_file(state: &Path, role: &str) -> PathBuf {
    state.join(format!("{role}.pid"))
}

fn read_pid(state: &Path, role: &str) -> Option<u32> {
    std::fs::read_to_string(pid_file(state, role))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn spawn(state: &Path, role: &str, args: &[String]) -> Result<u32, CliError> {
    let exe = std::env::current_exe().map_err(io("finding the weir binary"))?;
    let log = std::fs::File::create(state.join(format!("{role}.log")))
        .map_err(io(format!("creating {role}.log")))?;
    let child = std::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("log file"))?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this shell does not stop it.
        .process_group(0)
        .spawn()
        .map_err(io(format!("starting the {role}")))?;
    std::fs::write(pid_file(state, role), child.id().to_string())
        .map_err(io(format!("writing {role}.pid")))?;
    Ok(child.id())
}

fn is_mounted(mount_point: &Path) -> bool {
    crate::fuse::mount_device(mount_point).is_some()
}

async fn wait_for<F, Fut>(what: &str, state: &Path, role: &str, mut ok: F) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if ok().await {
            return Ok(());
        }
        if let Some(pid) = read_pid(state, role)
            && !alive(pid)
        {
            return Err(CliError::Usage(format!(
                "the {role} exited while waiting for {what}; see {}",
                state.join(format!("{role}.log")).display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(CliError::Usage(format!(
        "timed out waiting for {what}; see {}",
        state.join(format!("{role}.log")).display()
    )))
}

fn mem_dir(state: &Path) -> Result<PathBuf, CliError> {
    let text = std::fs::read_to_string(state.join("mem-dir")).map_err(io("reading mem-dir"))?;
    Ok(PathBuf::from(text.trim()))
}

pub async fn run(command: LocalCommand) -> Result<(), CliError> {
    match command {
        LocalCommand::Up(args) => up(args).await,
        LocalCommand::Down { state_dir } => down(&state_dir).await,
    }
}

async fn up(args: UpArgs) -> Result<(), CliError> {
    let state = std::path::absolute(&args.state_dir).map_err(io("state directory"))?;
    if ROLES.iter().any(|r| read_pid(&state, r).is_some_and(alive)) {
        return Err(CliError::Usage(format!(
            "Weir is already up in {}; run `weir local down` first",
            state.display()
        )));
    }
    let ufs_uri = if args.ufs.contains("://") {
        args.ufs.clone()
    } else {
        let dir = std::path::absolute(&args.ufs).map_err(io(args.ufs.clone()))?;
        if !dir.is_dir() {
            return Err(CliError::Usage(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        format!("local://{}", dir.display())
    };
    std::fs::create_dir_all(&state).map_err(io(format!("creating {}", state.display())))?;
    let mem = PathBuf::from(format!("/dev/shm/weir-local-{}", args.master_port));
    std::fs::write(state.join("mem-dir"), mem.to_string_lossy().as_bytes())
        .map_err(io("writing mem-dir"))?;
    let master_addr = format!("127.0.0.1:{}", args.master_port);

    spawn(
        &state,
        "master",
        &[
            "master".into(),
            "--id=1".into(),
            format!("--peers=1={master_addr}"),
            format!("--listen={master_addr}"),
            format!("--data-dir={}", state.join("master").display()),
        ],
    )?;
    let client = MasterClient::new(vec![master_addr.clone()], Duration::from_secs(2))?;
    wait_for("a leader", &state, "master", || async {
        client
            .call(|mut c| async move { c.get_leader(pb::Empty {}).await })
            .await
            .is_ok_and(|l| l.known)
    })
    .await?;

    spawn(
        &state,
        "worker",
        &[
            "worker".into(),
            format!("--masters={master_addr}"),
            "--host=127.0.0.1".into(),
            format!("--data-listen=127.0.0.1:{}", args.worker_port),
            format!("--http-listen=127.0.0.1:{}", args.worker_port + 1),
            format!("--tier=MEM:{}:{}", mem.display(), args.mem),
            format!("--state-dir={}", state.join("worker").display()),
        ],
    )?;
    wait_for("the worker to register", &state, "worker", || async {
        client
            .call(|mut c| async move { c.get_cluster_info(pb::Empty {}).await })
            .await
            .is_ok_and(|i| !i.workers.is_empty())
    })
    .await?;

    let table = client
        .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
        .await?;
    if !table.mounts.iter().any(|m| m.path == "/data") {
        let req = weir_api::MountSpec {
            path: "/data".into(),
            ufs_uri: ufs_uri.clone(),
            read_only: false,
            write_type: weir_api::WriteType::CacheThrough,
            sync: args.sync,
            options: args.options.into_iter().collect(),
            credential_files: args.credential_files.into_iter().collect(),
        }
        .to_request();
        client
            .call(|mut c| {
                let r = req.clone();
                async move { c.mount(r).await }
            })
            .await?;
    }

    let mount_point = std::path::absolute(&args.mount_point).map_err(io("mount point"))?;
    spawn(
        &state,
        "fuse",
        &[
            "fuse".into(),
            format!("--masters={master_addr}"),
            format!("--mount-point={}", mount_point.display()),
            "--sub-path=/data".into(),
            "--allow-other".into(),
        ],
    )?;
    std::fs::write(
        state.join("mount-point"),
        mount_point.to_string_lossy().as_bytes(),
    )
    .map_err(io("writing mount-point"))?;
    wait_for("the FUSE mount", &state, "fuse", || async {
        is_mounted(&mount_point)
    })
    .await?;
    println!(
        "Weir is up: {} (cached from {ufs_uri}); masters {master_addr}; logs in {}",
        mount_point.display(),
        state.display()
    );
    println!(
        "stop it with: weir local down --state-dir {}",
        state.display()
    );
    Ok(())
}

async fn down(state_dir: &Path) -> Result<(), CliError> {
    let state = std::path::absolute(state_dir).map_err(io("state directory"))?;
    for role in ROLES {
        let Some(pid) = read_pid(&state, role) else {
            continue;
        };
        if alive(pid) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let started = Instant::now();
            while alive(pid) && started.elapsed() < Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if alive(pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = std::fs::remove_file(pid_file(&state, role));
    }
    if let Ok(mp) = std::fs::read_to_string(state.join("mount-point")) {
        let mp = PathBuf::from(mp.trim());
        if is_mounted(&mp) {
            // The FUSE process was killed before it could unmount.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&mp)
                .status();
        }
    }
    if let Ok(mem) = mem_dir(&state) {
        let _ = std::fs::remove_dir_all(mem);
    }
    println!("Weir is down ({})", state.display());
    Ok(())
}
