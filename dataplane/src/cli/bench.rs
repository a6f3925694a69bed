//! `weir bench meta`: metadata operations per second against running
//! masters, with a no-op RPC (GetLeader) measured in the same run as the
//! baseline, so the numbers say how close to the RPC ceiling they are.

use super::{CliError, ConnArgs};
use crate::client::master::MasterClient;
use crate::proto::master as pb;
use clap::{Args, ValueEnum};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetaOp {
    Create,
    GetStatus,
}

#[derive(Debug, Args)]
pub struct MetaBenchArgs {
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "get-status,create"
    )]
    pub ops: Vec<MetaOp>,
    /// Concurrent clients (each with its own connection).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub clients: Vec<usize>,
    /// How long each measurement runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Directory the benchmark works in (created, then removed).
    #[arg(long, default_value = "/weir-bench")]
    pub dir: String,
    #[arg(long)]
    pub json: bool,
}

struct Outcome {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
    }
}

async fn run_clients<F, Fut>(
    conn: &ConnArgs,
    clients: usize,
    seconds: u64,
    op: F,
) -> Result<Outcome, CliError>
where
    F: Fn(Arc<MasterClient>, usize, u64) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Arc::new(conn.client()?);
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err, mut lat) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if op(client.clone(), c, i).await {
                    ok += 1;
                    // Sample latencies (1 in 8) to bound memory.
                    if i.is_multiple_of(8) {
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                } else {
                    err += 1;
                }
                i += 1;
            }
            (ok, err, lat)
        }));
    }
    let mut out = Outcome {
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        let (ok, err, lat) = t
            .await
            .map_err(|e| CliError::Usage(format!("bench task: {e}")))?;
        out.ops += ok;
        out.errors += err;
        out.latencies_us.extend(lat);
    }
    out.elapsed = started.elapsed();
    out.latencies_us.sort_unstable();
    Ok(out)
}

pub async fn meta(conn: &ConnArgs, args: MetaBenchArgs) -> Result<(), CliError> {
    let admin = conn.client()?;
    let dir = args.dir.trim_end_matches('/').to_owned();
    let mkdir = pb::CreateRequest {
        path: dir.clone(),
        recursive: true,
        ..Default::default()
    };
    admin
        .call(|mut c| {
            let r = mkdir.clone();
            async move { c.create_directory(r).await }
        })
        .await?;
    // Files for getStatus to read.
    const STAT_FILES: u64 = 1000;
    for i in 0..STAT_FILES {
        let req = pb::CreateRequest {
            path: format!("{dir}/stat/f{i}"),
            recursive: true,
            ..Default::default()
        };
        match admin
            .call(|mut c| {
                let r = req.clone();
                async move { c.create_file(r).await }
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let baseline = run_clients(conn, clients, args.seconds, |c, _, _| async move {
            c.call(|mut m| async move { m.get_leader(pb::Empty {}).await })
                .await
                .is_ok()
        })
        .await?;
        for &op in &args.ops {
            let d = dir.clone();
            let out = match op {
                MetaOp::GetStatus => {
                    run_clients(conn, clients, args.seconds, move |c, task, i| {
                        let path = format!("{d}/stat/f{}", (task as u64 * 7919 + i) % STAT_FILES);
                        async move {
                            let req = pb::PathRequest { path };
                            c.call(|mut m| {
                                let r = req.clone();
                                async move { m.get_status(r).await }
                            })
                            .await
                            .is_ok()
                        }
                    })
                    .await?
                }
                MetaOp::Create => {
                    let run = std::process::id();
                    run_clients(conn, clients, args.seconds, move |c, task, i| {
                        let path = format!("{d}/create-{run}-{clients}/c{task}/f{i}");
                        async move {
                            let req = pb::CreateRequest {
                                path,
                                recursive: true,
                                ..Default::default()
                            };
                            c.call(|mut m| {
                                let r = req.clone();
                                async move { m.create_file(r).await }
                            })
                            .await
                            .is_ok()
                        }
                    })
                    .await?
                }
            };
            rows.push((op, clients, out, baseline.rate()));
        }
    }
    let rm = pb::DeleteRequest {
        path: dir,
        recursive: true,
    };
    admin
        .call(|mut c| {
            let r = rm.clone();
            async move { c.delete(r).await }
        })
        .await?;

    if !args.json {
        println!(
            "| op | clients | ops/s | p50 µs | p99 µs | errors | no-op RPC ops/s (baseline) | ratio |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    for (op, clients, out, base) in rows {
        let name = match op {
            MetaOp::Create => "create",
            MetaOp::GetStatus => "getStatus",
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({"op": name, "clients": clients, "opsPerSec": out.rate(), "p50Us": out.percentile(0.5),
                    "p99Us": out.percentile(0.99), "errors": out.errors, "baselineOpsPerSec": base, "ratio": out.rate() / base})
            );
        } else {
            println!(
                "| {name} | {clients} | {:.0} | {} | {} | {} | {base:.0} | {:.2} |",
                out.rate(),
                out.percentile(0.5),
                out.percentile(0.99),
                out.errors,
                out.rate() / base
            );
        }
    }
    Ok(())
}
