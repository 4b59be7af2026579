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
    /// Delete the broker topology of `broker.prefix`: its queues (with the messages in them) and
    /// exchanges. For benchmarks and decommissioning; Postgres keeps every task, and a running
    /// coordinator declares the topology again and republishes what was queued.
    BrokerTeardown(BrokerTeardownArgs),
    /// Load an endpoint through the real teacher client (limits, retries) and report its
    /// throughput: how much one worker's teacher path can push, without queue or database.
    TeacherLoad(TeacherLoadArgs),
    /// The student: export the corpus as a fine-tuning set, launch a LoRA run, evaluate.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Name a completed run's corpus (snapshot), list snapshots, compare two corpora.
    #[command(subcommand)]
    Corpus(CorpusCommand),
}

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Write a run's finished rationales as student examples (train/validation/test and
    /// few-shot sets; JSONL and Parquet) with a manifest.
    Export(TrainExportArgs),
    /// Write the LoRA fine-tuning spec for an export and run the configured training command.
    Launch(TrainLaunchArgs),
    /// Score a student's predictions against exported examples (AUC, F1, ROUGE-L, BLEU-4).
    Eval(TrainEvalArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormatArg {
    Jsonl,
    Parquet,
    Both,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["run", "dataset", "snapshot"])))]
pub struct TrainExportArgs {
    /// The run to export.
    #[arg(long)]
    pub run: Option<Uuid>,
    /// Export the latest completed run of this dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Export the run a snapshot names (`reasonrec corpus snapshot`); the manifest records it.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Output folder (created if missing; files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "both")]
    pub format: ExportFormatArg,
    /// Export what is done now instead of waiting for the run to complete.
    #[arg(long)]
    pub partial: bool,
    /// Keep only rationales their judge scored at least this (1-5; `[stages] judge`); rows
    /// without a score are dropped too.
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..=5))]
    pub min_judge_score: Option<i16>,
    /// Drop rationales with fewer words.
    #[arg(long)]
    pub min_words: Option<usize>,
    /// Drop rationales with more words.
    #[arg(long)]
    pub max_words: Option<usize>,
    /// Keep only rationales whose conclusion argues the example's label.
    #[arg(long)]
    pub label_consistent: bool,
    /// Drop rationales whose normalised text repeats an earlier one.
    #[arg(long)]
    pub dedup: bool,
    /// Write only outputs a reviewer approved (`corpus audit`, the browser): reasoning outputs
    /// alone, and only approved profiles inside them; rejected ones are never written.
    #[arg(long)]
    pub approved_only: bool,
    /// Few-shot set sizes, comma-separated (default: trainer.few_shot; 0 for none).
    #[arg(long, value_delimiter = ',')]
    pub few_shot: Option<Vec<usize>>,
    /// Seconds between looks at the run while waiting for it to complete.
    #[arg(long, default_value_t = 2.0)]
    pub poll_secs: f64,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrainLaunchArgs {
    /// A folder written by `reasonrec train export`.
    #[arg(long)]
    pub export: PathBuf,
    /// Where the spec (train_spec.json) and the training outputs go.
    #[arg(long)]
    pub out: PathBuf,
    /// Pass --dry-run to the command (check and tokenise the data; no GPU).
    #[arg(long)]
    pub dry_run: bool,
    /// Write the spec and print the command without running it.
    #[arg(long)]
    pub print_only: bool,
}

#[derive(Debug, Args)]
pub struct TrainEvalArgs {
    /// Exported examples files (JSONL), e.g. test.jsonl.
    #[arg(long, num_args = 1.., required = true)]
    pub examples: Vec<PathBuf>,
    /// The student's predictions (JSONL: id, p_yes and/or prediction, optional reasoning).
    #[arg(long)]
    pub predictions: PathBuf,
    /// Where eval.json and eval.md go.
    #[arg(long)]
    pub out: PathBuf,
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
    /// Recent runs: dataset, state (and why paused), priority, progress, cost and budget.
    List(RunListArgs),
    /// Stop publishing a run's tasks (messages already queued are still worked).
    Pause(RunPauseArgs),
    /// Publish a paused run's tasks again (refused while its spend is over its budget).
    Resume(RunArg),
    /// Set a run's budget; a run pauses itself when its spend reaches it.
    Budget(RunBudgetArgs),
    /// Delete what `[retention]` lets go: old finished runs' task rows, ledger outputs no task
    /// uses, rows of old dataset versions. Snapshotted, exported and unfinished runs stay.
    Prune(RunPruneArgs),
}

#[derive(Debug, Args)]
pub struct RunPruneArgs {
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
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
    /// Compare with the previous completed run of this dataset name (any version): tasks whose
    /// inputs, template and teacher are unchanged are carried over done (no message, no teacher
    /// call); only stale ones are worked. See the [regenerate] settings.
    #[arg(long)]
    pub incremental: bool,
    /// Print what would be planned, by stage and staleness reason, with a token and cost
    /// estimate; write nothing.
    #[arg(long, conflicts_with_all = ["wait", "no_publish"])]
    pub dry_run: bool,
    /// Publishing order among running runs, higher first (default 0; -10 for --incremental:
    /// new data before regeneration).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Pause the run when its teacher spend reaches this many dollars.
    #[arg(long, value_parser = dollars)]
    pub budget_usd: Option<f64>,
    /// Pause the run when its teacher attempts reach this many tokens (input + output).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub budget_tokens: Option<i64>,
    /// When a run through batch endpoints must be finished: `HH:MM` (UTC, the next such time)
    /// or an RFC 3339 time. Once batches could not end by then at the observed turnaround, the
    /// rest goes to live endpoints (overrides `[batch] deadline`).
    #[arg(long)]
    pub deadline: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunStatusArgs {
    pub run: Option<Uuid>,
    #[arg(long)]
    pub json: bool,
    /// Redraw progress bars per stage every 2 s until the run is finished (exit 2 if any task
    /// failed).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
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
pub struct BrokerTeardownArgs {
    /// Required: the queued messages are deleted with the queues.
    #[arg(long)]
    pub yes: bool,
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

#[derive(Debug, Args)]
pub struct RunListArgs {
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunPauseArgs {
    pub run: Uuid,
    /// Why (shown by `run status` and `run list`).
    #[arg(long, default_value = "paused by hand")]
    pub reason: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("limit").required(true).multiple(true).args(["usd", "tokens", "clear"])))]
pub struct RunBudgetArgs {
    pub run: Uuid,
    /// Dollars of teacher spend (replaces the dollar limit; the token limit stays).
    #[arg(long, value_parser = dollars)]
    pub usd: Option<f64>,
    /// Input + output tokens (replaces the token limit; the dollar limit stays).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub tokens: Option<i64>,
    /// Remove both limits.
    #[arg(long, conflicts_with_all = ["usd", "tokens"])]
    pub clear: bool,
}

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Name a completed run's corpus; the run then stays completed (no retry-failed, no cancel).
    Snapshot(SnapshotArgs),
    /// List the snapshots.
    Snapshots(SnapshotsArgs),
    /// What changed between two corpora (run ids or snapshot names): tasks added, removed,
    /// changed (another output) and unchanged, per stage, with examples.
    Diff(CorpusDiffArgs),
    /// Review a run's outputs without a browser: print a seeded sample stratified by stage and
    /// label (`--sample`), record verdicts from a file (`--marks`), or, with neither, print
    /// what was audited and the error rate it suggests per stage.
    Audit(CorpusAuditArgs),
    /// Build the answers' trigram index, which makes the corpus browser's text search fast on
    /// large runs (built while workers go on writing); `--drop` drops it. Every output written
    /// afterwards pays for it (BENCHMARKS.md, session 10), so it is not built by default.
    TextIndex(TextIndexArgs),
}

#[derive(Debug, Args)]
pub struct TextIndexArgs {
    /// Drop the index instead.
    #[arg(long)]
    pub drop: bool,
}

#[derive(Debug, Args)]
pub struct CorpusAuditArgs {
    /// The run (a run id or a snapshot name).
    pub run: String,
    /// Outputs per (stage, label) to print for review.
    #[arg(long, conflicts_with = "marks")]
    pub sample: Option<i64>,
    /// Seed of the sample (the same seed draws the same outputs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A JSONL file of verdicts, one object per line: {"task": UUID, "verdict": "approved" |
    /// "rejected", "reason": TEXT}; lines whose verdict is null are skipped, so the JSON sample
    /// (`--sample N --json`) filled in by a reviewer is such a file.
    #[arg(long)]
    pub marks: Option<PathBuf>,
    /// Who reviewed (default: $USER).
    #[arg(long)]
    pub reviewer: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// A completed run.
    pub run: Uuid,
    /// The snapshot's name (never reused; not a UUID).
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CorpusDiffArgs {
    /// The older corpus: a run id or a snapshot name.
    pub a: String,
    /// The newer corpus: a run id or a snapshot name.
    pub b: String,
    /// Example subjects listed per category.
    #[arg(long, default_value_t = 10)]
    pub examples: i64,
    #[arg(long)]
    pub json: bool,
}

/// A budget in dollars: a finite, non-negative number.
fn dollars(s: &str) -> Result<f64, String> {
    match s.trim_start_matches('$').parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("expected a non-negative amount of dollars, got {s:?}")),
    }
}
