//! `weir job ...` and the job-submitting `weir fs` commands (load, persist,
//! free, replicate): submit, then optionally follow the job with a live
//! progress line until it ends.

use super::{CliError, ConnArgs};
use crate::proto::master as pb;
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::IsTerminal;
use std::time::Duration;
use weir_api::MasterClient;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Jobs, oldest first.
    Ls {
        /// Only jobs that have not finished.
        #[arg(long)]
        active: bool,
        #[arg(long)]
        json: bool,
    },
    /// One job's state and progress.
    Get {
        id: u64,
        /// Follow it until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop a job; work already done stays done.
    Cancel { id: u64 },
}

/// How a job-submitting command reports.
#[derive(Debug, Args, Clone)]
pub struct FollowArgs {
    /// Follow the job with a progress bar until it ends; the exit status
    /// says whether it completed.
    #[arg(long)]
    pub watch: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Pending) => "Pending",
        Ok(pb::JobState::Running) => "Running",
        Ok(pb::JobState::Completed) => "Completed",
        Ok(pb::JobState::Failed) => "Failed",
        Ok(pb::JobState::Cancelled) => "Cancelled",
        Err(_) => "Unknown",
    }
}

fn kind_name(job: &pb::JobInfo) -> &'static str {
    match job.spec.as_ref().map(|s| pb::JobKind::try_from(s.kind)) {
        Some(Ok(pb::JobKind::Load)) => "load",
        Some(Ok(pb::JobKind::Persist)) => "persist",
        Some(Ok(pb::JobKind::Free)) => "free",
        Some(Ok(pb::JobKind::Replicate)) => "replicate",
        _ => "unknown",
    }
}

fn finished(job: &pb::JobInfo) -> bool {
    matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

pub fn job_json(job: &pb::JobInfo) -> serde_json::Value {
    let spec = job.spec.clone().unwrap_or_default();
    json!({
        "id": job.id, "kind": kind_name(job), "state": state_name(job.state),
        "paths": spec.paths, "replicas": spec.replicas, "planned": job.planned,
        "filesTotal": job.files_total, "filesDone": job.files_done,
        "bytesTotal": job.bytes_total, "bytesDone": job.bytes_done,
        "filesSkipped": job.files_skipped, "failedCount": job.failed_count,
        "failed": job.failed.iter().map(|f| json!({"path": f.path, "reason": f.reason})).collect::<Vec<_>>(),
        "message": job.message, "submittedMs": job.submitted_ms, "startedMs": job.started_ms,
        "finishedMs": job.finished_ms, "throughputBytesPerSec": job.throughput_bytes_per_sec,
        "etaSeconds": job.eta_seconds,
    })
}

fn percent(job: &pb::JobInfo) -> f64 {
    if !job.planned {
        return 0.0;
    }
    if job.bytes_total == 0 {
        return if job.files_total == 0 {
            100.0
        } else {
            (job.files_done + job.failed_count) as f64 * 100.0 / job.files_total as f64
        };
    }
    job.bytes_done as f64 * 100.0 / job.bytes_total as f64
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

pub fn job_line(job: &pb::JobInfo) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let eta = job
        .eta_seconds
        .map(|s| format!(" eta {s}s"))
        .unwrap_or_default();
    let mut line = format!(
        "{:>5} {:<9} {:<9} {:>5.1}% files {}/{} bytes {}/{} {:.1} MiB/s{eta} {}",
        job.id,
        kind_name(job),
        state_name(job.state),
        percent(job),
        job.files_done,
        job.files_total,
        job.bytes_done,
        job.bytes_total,
        mib(job.throughput_bytes_per_sec),
        spec.paths.join(",")
    );
    if job.failed_count > 0 {
        line.push_str(&format!(" ({} failed)", job.failed_count));
    }
    if !job.message.is_empty() {
        line.push_str(&format!(": {}", job.message));
    }
    line
}

async fn get(client: &MasterClient, id: u64) -> Result<pb::JobInfo, CliError> {
    let req = pb::JobId { id };
    Ok(client
        .call(|mut c| async move { c.get_job(req).await })
        .await?)
}

/// Polls a job until it ends, drawing a progress bar on a terminal (a line
/// per change otherwise); fails unless it completed.
pub async fn follow(client: &MasterClient, id: u64, json: bool) -> Result<(), CliError> {
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let job = loop {
        let job = get(client, id).await?;
        let line = job_line(&job);
        if !json && line != last {
            if tty {
                let width = 30;
                let filled = ((percent(&job) / 100.0) * width as f64) as usize;
                eprint!(
                    "\r[{}{}] {line}\x1b[K",
                    "#".repeat(filled.min(width)),
                    " ".repeat(width - filled.min(width))
                );
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if finished(&job) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if tty && !json {
        eprintln!();
    }
    if json {
        println!("{}", job_json(&job));
    }
    for f in &job.failed {
        eprintln!("failed: {}: {}", f.path, f.reason);
    }
    match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Completed) => Ok(()),
        _ => Err(CliError::Usage(format!(
            "job {id} {}: {}",
            state_name(job.state).to_lowercase(),
            job.message
        ))),
    }
}

/// Submits `spec`; follows it with `--watch`, else prints its id.
pub async fn submit(
    client: &MasterClient,
    spec: pb::JobSpec,
    how: &FollowArgs,
) -> Result<(), CliError> {
    let job = client
        .call(|mut c| {
            let spec = spec.clone();
            async move { c.submit_job(spec).await }
        })
        .await?;
    if how.watch {
        return follow(client, job.id, how.json).await;
    }
    if how.json {
        println!("{}", job_json(&job));
    } else {
        println!("{}", job.id);
        eprintln!(
            "submitted job {}: follow it with `weir job get {} --watch`",
            job.id, job.id
        );
    }
    Ok(())
}

pub async fn run(conn: &ConnArgs, command: JobCommand) -> Result<(), CliError> {
    let client = &conn.client()?;
    match command {
        JobCommand::Ls { active, json } => {
            let mut after = 0;
            let mut all = Vec::new();
            loop {
                let req = pb::ListJobsRequest { after, limit: 1000 };
                let page = client
                    .call(|mut c| async move { c.list_jobs(req).await })
                    .await?;
                let Some(last) = page.jobs.last() else { break };
                after = last.id;
                all.extend(page.jobs.into_iter().filter(|j| !active || !finished(j)));
            }
            if json {
                let list: Vec<_> = all.iter().map(job_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for job in &all {
                    println!("{}", job_line(job));
                }
            }
            Ok(())
        }
        JobCommand::Get { id, watch, json } => {
            if watch {
                return follow(client, id, json).await;
            }
            let job = get(client, id).await?;
            if json {
                println!("{}", job_json(&job));
            } else {
                println!("{}", job_line(&job));
                for f in &job.failed {
                    println!("failed: {}: {}", f.path, f.reason);
                }
            }
            Ok(())
        }
        JobCommand::Cancel { id } => {
            let req = pb::JobId { id };
            let job = client
                .call(|mut c| async move { c.cancel_job(req).await })
                .await?;
            eprintln!("job {id} is {}", state_name(job.state));
            Ok(())
        }
    }
}
