//! `soak`: the soak scenario at full size (see `reasonrec_tests::soak`), for `scripts/soak.sh`.
//! Prints the report as text and JSON; exits 1 if the promise broke.

use clap::Parser;
use reasonrec_tests::soak::{SoakConfig, run};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 7)]
    nights: u32,
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// The endpoint's requests per minute: with ~1,500 tasks on night 1, 1,200/min makes the
    /// queue wait ~75 s, 15x `republish_after`.
    #[arg(long, default_value_t = 1_200)]
    requests_per_minute: u32,
    #[arg(long, default_value_t = 5)]
    republish_after_secs: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    #[arg(long, default_value_t = 900)]
    night_timeout: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write the JSON report here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let a = Args::parse();
    let cfg = SoakConfig {
        nights: a.nights,
        users: a.users,
        requests_per_minute: a.requests_per_minute,
        republish_after_secs: a.republish_after_secs,
        concurrency: a.concurrency,
        faults: SoakConfig::faults(),
        night_timeout: Duration::from_secs(a.night_timeout),
        seed: a.seed,
    };
    let report = run(cfg).await?;
    reasonrec_tests::finish_report(&report.render(), &report, report.ok(), a.json.as_deref())
}
