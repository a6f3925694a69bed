//! `weir bench meta`: metadata operations per second against running
//! masters, with a no-op RPC (GetLeader) measured in the same run as the
//! baseline, so the numbers say how close to the RPC ceiling they are.

use super::{CliError, ConnArgs};
use crate::proto::master as pb;
use clap::{Args, ValueEnum};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_api::MasterClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetaOp {
    Create,
    GetStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// One gRPC call per operation.
    Unary,
    /// Operations pipelined on metadata streams (one per 16 clients).
    Stream,
}

#[derive(Debug, Args)]
pub struct MetaBenchArgs {
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "unary,stream"
    )]
    pub transports: Vec<Transport>,
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
    prepare(&admin, &dir).await?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let baseline = run_clients(conn, clients, args.seconds, |c, _, _| async move {
            c.call(|mut m| async move { m.get_leader(pb::Empty {}).await })
                .await
                .is_ok()
        })
        .await?;
        for &transport in &args.transports {
            let sessions = match transport {
                Transport::Unary => Arc::new(Vec::new()),
                Transport::Stream => {
                    let mut v = Vec::new();
                    for _ in 0..clients.div_ceil(16) {
                        v.push(admin.open_session().await?);
                    }
                    Arc::new(v)
                }
            };
            for &op in &args.ops {
                let d = dir.clone();
                let sessions = sessions.clone();
                let run = std::process::id();
                let t = transport;
                let out = run_clients(conn, clients, args.seconds, move |c, task, i| {
                    let path = match op {
                        MetaOp::GetStatus => {
                            format!("{d}/stat/f{}", (task as u64 * 7919 + i) % STAT_FILES)
                        }
                        MetaOp::Create => format!("{d}/create-{run}-{clients}-{t:?}/c{task}/f{i}"),
                    };
                    let sessions = sessions.clone();
                    async move { one_op(&c, &sessions, t, op, task, path).await }
                })
                .await?;
                rows.push((op, transport, clients, out, baseline.rate()));
            }
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

    print_rows(rows, args.json);
    Ok(())
}

/// Files for getStatus to read.
const STAT_FILES: u64 = 1000;

/// The benchmark's directory and the files getStatus reads.
async fn prepare(admin: &MasterClient, dir: &str) -> Result<(), CliError> {
    let mkdir = pb::CreateRequest {
        path: dir.to_owned(),
        recursive: true,
        ..Default::default()
    };
    admin
        .call(|mut c| {
            let r = mkdir.clone();
            async move { c.create_directory(r).await }
        })
        .await?;
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
    Ok(())
}

/// One operation of a benchmark client: whether it succeeded.
async fn one_op(
    c: &MasterClient,
    sessions: &[weir_api::MetaSession],
    t: Transport,
    op: MetaOp,
    task: usize,
    path: String,
) -> bool {
    use pb::meta_request::Op;
    match (t, op) {
        (Transport::Stream, MetaOp::GetStatus) => sessions[task % sessions.len()]
            .call(Op::GetStatus(pb::PathRequest { path }))
            .await
            .is_ok(),
        (Transport::Stream, MetaOp::Create) => sessions[task % sessions.len()]
            .call(Op::CreateFile(pb::CreateRequest {
                path,
                recursive: true,
                ..Default::default()
            }))
            .await
            .is_ok(),
        (Transport::Unary, MetaOp::GetStatus) => {
            let req = pb::PathRequest { path };
            c.call(|mut m| {
                let r = req.clone();
                async move { m.get_status(r).await }
            })
            .await
            .is_ok()
        }
        (Transport::Unary, MetaOp::Create) => {
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
    }
}

/// The table (or JSON lines) of a benchmark's rows.
fn print_rows(rows: Vec<(MetaOp, Transport, usize, Outcome, f64)>, json: bool) {
    if !json {
        println!(
            "| op | transport | clients | ops/s | p50 µs | p99 µs | errors | no-op RPC ops/s (baseline) | ratio |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    for (op, transport, clients, out, base) in rows {
        let transport = format!("{transport:?}").to_lowercase();
        let name = match op {
            MetaOp::Create => "create",
            MetaOp::GetStatus => "getStatus",
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"op": name, "transport": transport, "clients": clients, "opsPerSec": out.rate(), "p50Us": out.percentile(0.5),
                    "p99Us": out.percentile(0.99), "errors": out.errors, "baselineOpsPerSec": base, "ratio": out.rate() / base})
            );
        } else {
            println!(
                "| {name} | {transport} | {clients} | {:.0} | {} | {} | {} | {base:.0} | {:.2} |",
                out.rate(),
                out.percentile(0.5),
                out.percentile(0.99),
                out.errors,
                out.rate() / base
            );
        }
    }
}
