//! `chaos`: the chaos scenario at full size (see `reasonrec_tests::chaos`), for
//! `scripts/chaos.sh`. Prints the report as text and JSON; exits 1 if the promise broke.

use clap::Parser;
use reasonrec_core::settings::Protocol;
use reasonrec_tests::chaos::{BatchChaos, ChaosConfig, run};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// The reasonrec binary the workers run.
    #[arg(long)]
    reasonrec: PathBuf,
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 128)]
    concurrency: u16,
    /// Seconds between two kills.
    #[arg(long, default_value_t = 5)]
    kill_every: u64,
    #[arg(long, default_value_t = 4)]
    broker_cuts: u32,
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write the JSON report here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Route the run through the mock's Batch API of this protocol, with batch faults on (lost
    /// create answers, refused calls, errored and expired lines); the report adds the batch
    /// figures and fails on a batch sent twice.
    #[arg(long, value_parser = ["openai", "anthropic"])]
    batch: Option<String>,
    /// With --batch: once this share of the tasks is finished (e.g. 0.3), the run's deadline
    /// becomes now, so it spills to the live endpoint mid-run and its open batches are cancelled.
    #[arg(long, requires = "batch", value_name = "FRACTION")]
    spill_at: Option<f64>,
    /// Keep each worker process's stderr in DIR/<name>.log (RUST_LOG from
    /// CHAOS_WORKER_RUST_LOG, default warn,reasonrec_worker=info).
    #[arg(long, value_name = "DIR")]
    worker_logs: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let a = Args::parse();
    let batch = a.batch.as_deref().map(|p| BatchChaos {
        protocol: if p == "anthropic" { Protocol::Anthropic } else { Protocol::OpenAi },
        spill_at: a.spill_at,
    });
    let faults = match &batch {
        Some(b) => {
            ChaosConfig::with_batch_faults(ChaosConfig::issue_faults(), b.protocol, ChaosConfig::batch_lines(a.tasks))
        }
        None => ChaosConfig::issue_faults(),
    };
    let cfg = ChaosConfig {
        reasonrec: a.reasonrec,
        tasks: a.tasks,
        workers: a.workers,
        concurrency: a.concurrency,
        kill_every: Duration::from_secs(a.kill_every),
        broker_cuts: a.broker_cuts,
        restart_postgres: true,
        faults,
        timeout: Duration::from_secs(a.timeout),
        seed: a.seed,
        batch,
        worker_logs: a.worker_logs,
    };
    let report = run(cfg).await?;
    reasonrec_tests::finish_report(&report.render(), &report, report.ok(), a.json.as_deref())
}
