//! `chaos`: the chaos scenario at full size (see `reasonrec_tests::chaos`), for
//! `scripts/chaos.sh`. Prints the report as text and JSON; exits 1 if the promise broke.

use clap::Parser;
use reasonrec_tests::chaos::{ChaosConfig, run};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let a = Args::parse();
    let cfg = ChaosConfig {
        reasonrec: a.reasonrec,
        tasks: a.tasks,
        workers: a.workers,
        concurrency: a.concurrency,
        kill_every: Duration::from_secs(a.kill_every),
        broker_cuts: a.broker_cuts,
        restart_postgres: true,
        faults: ChaosConfig::issue_faults(),
        timeout: Duration::from_secs(a.timeout),
        seed: a.seed,
    };
    let report = run(cfg).await?;
    print!("{}", report.render());
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(p) = a.json {
        std::fs::write(p, &json)?;
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
