//! Command-line definitions.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "reasonrec", version, about = "LLM-written rationales for recommendation data, as a batch job system")]
pub struct Cli {
    /// Configuration file (TOML). Default: ./reasonrec.toml if present. Environment variables
    /// REASONREC__SECTION__KEY override it.
    #[arg(long, global = true, env = "REASONREC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the migrations in sql/ to the configured database.
    Migrate,
    /// Load a dataset into Postgres (all or nothing; the same files twice is a no-op).
    Ingest(IngestArgs),
    /// Dataset utilities.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Plan, publish and follow runs.
    #[command(subcommand)]
    Run(RunCommand),
    /// Consume tasks, call the teacher, store rationales.
    Worker(WorkerArgs),
    /// Publish ready tasks of every running run and mark runs completed (long-running).
    Coordinator,
    /// Serve the mock teacher (OpenAI chat-completions protocol) for tests, demo and benchmarks.
    MockTeacher(MockTeacherArgs),
    /// Load an endpoint through the real teacher client (limits, retries) and report its
    /// throughput: how much one worker's teacher path can push, without queue or database.
    TeacherLoad(TeacherLoadArgs),
}

#[derive(Debug, Args)]
pub struct TeacherLoadArgs {
    /// Endpoint name from the configuration (default: the first).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 2000)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Source format: ml-1m, ml-100k, ml-latest, amazon (reviews.jsonl + optional meta.jsonl)
    /// or jsonl (items.jsonl, interactions.jsonl, optional users.jsonl).
    #[arg(long, default_value = "ml-1m")]
    pub format: String,
    /// Directory (or file) holding the dataset.
    #[arg(long, default_value = "data/sample/ml-1m")]
    pub path: PathBuf,
    /// Name under which the dataset is stored; versions are kept per name.
    #[arg(long, default_value = "sample")]
    pub dataset: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Write a synthetic dataset (MovieLens-1M format) for samples and benchmarks.
    Generate(GenerateArgs),
    /// Users, items, interactions, rating histogram, like share and k-core sizes of a dataset.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Dataset name (its latest version).
    pub dataset: String,
    #[arg(long)]
    pub version: Option<i32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long, default_value = "ml-1m")]
    pub format: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub users: usize,
    #[arg(long, default_value_t = 400)]
    pub items: usize,
    #[arg(long, default_value_t = 20)]
    pub min_ratings: usize,
    #[arg(long, default_value_t = 60)]
    pub max_ratings: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Plan a run of a dataset and publish its ready tasks.
    Create(RunCreateArgs),
    /// Progress of a run (default: the latest).
    Status(RunStatusArgs),
    /// Put a run's failed tasks back to be done again (attempt history is kept).
    RetryFailed(RetryFailedArgs),
    /// Cancel a run: unfinished tasks are cancelled, queued messages are skipped by workers.
    Cancel(RunArg),
}

#[derive(Debug, Args)]
pub struct RunArg {
    pub run: Uuid,
}

#[derive(Debug, Args)]
pub struct RetryFailedArgs {
    pub run: Uuid,
    /// Publish them and wait until the run is done again (else a running coordinator publishes).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct RunCreateArgs {
    #[arg(long, default_value = "sample")]
    pub dataset: String,
    /// Keep publishing and wait until every task is done or failed; exit 0 only if none failed.
    #[arg(long)]
    pub wait: bool,
    /// Plan only; a running `reasonrec coordinator` publishes.
    #[arg(long, conflicts_with = "wait")]
    pub no_publish: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunStatusArgs {
    pub run: Option<Uuid>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Name of this worker in logs and on the broker (default: worker-<pid>).
    #[arg(long)]
    pub name: Option<String>,
    /// Overrides worker.concurrency (= prefetch).
    #[arg(long)]
    pub concurrency: Option<u16>,
}

#[derive(Debug, Args)]
pub struct MockTeacherArgs {
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub bind: SocketAddr,
    /// Initial configuration as JSON (see `GET /config`); flags below override it.
    #[arg(long)]
    pub config_json: Option<String>,
    #[arg(long)]
    pub latency_ms: Option<u64>,
    #[arg(long)]
    pub latency_jitter_ms: Option<u64>,
    #[arg(long)]
    pub rate_429: Option<f64>,
    #[arg(long)]
    pub rate_5xx: Option<f64>,
    #[arg(long)]
    pub rate_hang: Option<f64>,
    #[arg(long)]
    pub rate_malformed: Option<f64>,
    /// Share of reasoning answers that argue the opposite of the stated outcome.
    #[arg(long)]
    pub rate_contradict: Option<f64>,
    #[arg(long)]
    pub requests_per_minute: Option<u32>,
    #[arg(long)]
    pub tokens_per_minute: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
}
