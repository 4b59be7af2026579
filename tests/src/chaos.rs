//! The chaos scenario: a run of reasoning tasks against a faulty mock teacher while worker
//! processes are killed with SIGKILL, every broker connection is cut through a TCP proxy the
//! scenario owns, and a private Postgres server (own data dir and port) is restarted.
//!
//! Used by `scripts/chaos.sh` (the `chaos` binary, 50,000 tasks) and by a shorter test in
//! `crates/cli/tests/chaos.rs`. Never touches the machine's shared RabbitMQ or Postgres beyond
//! its own names: the broker is reached through [`TcpProxy`], Postgres is [`PrivatePostgres`].
//!
//! With [`ChaosConfig::batch`] (issue 17) the run is routed to a Batch API endpoint of the same
//! mock (a live endpoint stays configured): the batch submitter lives in the worker processes
//! that are killed, so every kill of the one holding the endpoint's lock hands its open batches
//! to another process mid-flight, while the mock loses create answers, errors and expires lines
//! and refuses calls ([`ChaosConfig::with_batch_faults`]). The report then also counts the
//! batches the provider was asked for twice ([`BatchFigures`]).

use crate::TestEnv;
use crate::pg::PrivatePostgres;
use crate::proxy::TcpProxy;
use anyhow::Context;
use rand::{Rng, SeedableRng};
use reasonrec_coordinator::{Target, create_run, supervise};
use reasonrec_core::settings::{EndpointMode, EndpointSettings, Protocol};
use reasonrec_dataset::generate::{GenerateSpec, generate_ml1m};
use reasonrec_mock_teacher::MockConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `reasonrec` binary the worker processes run.
    pub reasonrec: PathBuf,
    /// At least this many reasoning tasks are planned.
    pub tasks: usize,
    /// Worker processes alive at once.
    pub workers: usize,
    pub concurrency: u16,
    /// A random worker is killed (SIGKILL) and replaced this often.
    pub kill_every: Duration,
    /// Times every broker connection is cut, spread over the run's progress.
    pub broker_cuts: u32,
    /// Restart the private Postgres server once, half way.
    pub restart_postgres: bool,
    pub faults: MockConfig,
    pub timeout: Duration,
    pub seed: u64,
    /// Route the run through a Batch API endpoint of this protocol (the batch faults come with
    /// `faults`, see [`ChaosConfig::with_batch_faults`]); None: live calls only.
    pub batch: Option<BatchChaos>,
    /// Where each worker process's stderr goes (`<dir>/<name>.log`, with `RUST_LOG` from
    /// `CHAOS_WORKER_RUST_LOG`, default `warn,reasonrec_worker=info`), to see what a worker did
    /// before it was killed; None: discarded, `RUST_LOG=error`.
    pub worker_logs: Option<PathBuf>,
}

/// The batch path of the scenario.
#[derive(Debug, Clone)]
pub struct BatchChaos {
    pub protocol: Protocol,
    /// Once this share of the tasks is finished, the run's deadline is set to now: the
    /// submitter spills it to the live endpoint and cancels its open batches, whose unfinished
    /// lines then go live too (batch work crossing to live calls under kills). A deadline set
    /// at the start would spill at once or never on a given machine (the projection shrinks as
    /// fast as the work when the provider keeps its pace), so the spill is tied to progress, as
    /// the other faults are. None: no deadline, batches only.
    pub spill_at: Option<f64>,
}

/// The batch endpoint's name in the run's settings and the workers' config.
const BATCH_ENDPOINT: &str = "mock-batch";
/// The run's batch rows still open (must be none at the end: an open batch holds its tasks).
const OPEN_BATCHES_SQL: &str =
    "SELECT count(*) FROM batches WHERE run_id = $1 AND state IN ('building', 'submitting', 'submitted')";
/// The live endpoint's name (as [`TestEnv`] names it).
const LIVE_ENDPOINT: &str = "mock";
/// Estimated prompt tokens of one reasoning line of the scenario's dataset (history of 10
/// ratings), measured: the unit of the OpenAI enqueued-token limit.
const PROMPT_TOKENS: u64 = 330;

impl ChaosConfig {
    /// The faults of the issue: 10 % 429 with Retry-After, 5 % 5xx, 2 % hangs, 3 % malformed.
    pub fn issue_faults() -> MockConfig {
        MockConfig {
            rate_429: 0.10,
            retry_after_secs: 1,
            rate_5xx: 0.05,
            rate_hang: 0.02,
            hang_secs: 60,
            rate_malformed: 0.03,
            latency_ms: 5,
            latency_jitter_ms: 20,
            ..MockConfig::default()
        }
    }

    /// `faults` with the Batch API's faults on: a turnaround of 1.5 s (and 0.3 s finalizing or
    /// cancelling), 3 % of lines errored, 2 % expired (their batch ends `expired`, the rest of it
    /// answered), 2 % of answers contradicting the outcome (re-asked), 5 % of create and
    /// retrieve calls refused (Anthropic 529 `overloaded_error`, OpenAI 500: a refused create
    /// creates nothing, so the next submitter must search before it sends again), and 6 creates
    /// whose batch is made but whose answer is lost, the case where a careless submitter sends a
    /// batch twice ([`run`] arms two more at each broker cut). OpenAI also gets an
    /// enqueued-token limit of three and a half batches of `lines` lines, so a fourth batch
    /// created while three are in flight fails `token_limit_exceeded` (and its tasks go again),
    /// while one batch alone always fits, re-asks and all.
    pub fn with_batch_faults(faults: MockConfig, protocol: Protocol, lines: u32) -> MockConfig {
        let enqueued_tokens = u64::from(lines) * PROMPT_TOKENS * 7 / 2;
        MockConfig {
            batch_turnaround_ms: 1_500,
            batch_finalizing_ms: 300,
            batch_line_error_rate: 0.03,
            batch_expire_rate: 0.02,
            batch_overloaded_rate: 0.05,
            batch_lose_create_response: 6,
            // Answers that argue against the outcome: re-asked in a later batch.
            rate_contradict: 0.02,
            batch_enqueued_token_limit: if protocol == Protocol::OpenAi { enqueued_tokens } else { 0 },
            ..faults
        }
    }

    /// Lines of one batch: a twenty-fifth of the run (at least 20, at most 2,000), so that any
    /// size of run makes many batches, and kills, cuts and the restart land between them.
    pub fn batch_lines(tasks: usize) -> u32 {
        u32::try_from(tasks / 25).unwrap_or(u32::MAX).clamp(20, 2_000)
    }
}

/// What the scenario observed; `ok()` says whether the promise held.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    pub tasks: i64,
    pub done: i64,
    /// Failed tasks whose message was dead-lettered (the reason is in `last_error`).
    pub dead_lettered: i64,
    /// Other failed tasks (answer rejected after re-asks, teacher retries spent).
    pub failed_other: i64,
    /// Tasks neither done nor failed at the end (must be 0).
    pub unfinished: i64,
    /// Rationale rows written by this run.
    pub rationales: i64,
    /// Tasks with more than one rationale row, or done tasks whose rationale is missing.
    pub duplicates: i64,
    pub missing: i64,
    pub teacher_requests: u64,
    pub injected_faults: u64,
    /// teacher requests / tasks
    pub calls_per_task: f64,
    /// (teacher requests - injected faults) / tasks: the goal is <= 1.02.
    pub calls_per_task_net_of_faults: f64,
    pub kills: u32,
    pub broker_cuts: u32,
    pub postgres_restarts: u32,
    pub seconds: f64,
    pub tasks_per_second: f64,
    /// The batch path's figures (with [`ChaosConfig::batch`]).
    pub batch: Option<BatchFigures>,
}

/// What the batch path did, from our rows and from the provider's (the mock's) side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchFigures {
    pub protocol: String,
    /// The run's route at the end: `live` once it spilled.
    pub route: String,
    pub spilled: bool,
    /// Our batch rows of the run; those that got a provider id; those that ended `failed`
    /// (refused by the provider as a whole, e.g. `token_limit_exceeded`).
    pub rows: i64,
    pub rows_submitted: i64,
    pub rows_failed: i64,
    /// Rows still open at the end (must be 0: an open batch holds its tasks).
    pub rows_open: i64,
    /// Batches the provider created.
    pub provider_batches: u64,
    /// Provider batches holding custom ids an earlier provider batch held: the same batch row
    /// sent twice (must be 0).
    pub duplicate_submissions: u64,
    /// Provider batches beyond one per row that has a provider id (must be 0): a batch sent
    /// that no row adopted.
    pub provider_batches_without_row: i64,
    /// Provider faults met: create answers lost after the batch was made, create or retrieve
    /// calls refused (529 / 500), batches cancelled at the provider.
    pub create_answers_lost: u64,
    pub overloaded: u64,
    pub provider_cancelled: u64,
    /// Prompt tokens per answered line at the provider (what its enqueued-token limit counts).
    pub prompt_tokens_per_line: f64,
    /// Our lines, by outcome (`done`, `rejected` = re-asked, `errored`, `expired`, `canceled`,
    /// `failed`, `reused`, `stale`, ...); a line without one by its batch's state (`(batch
    /// failed)`: the provider refused the whole batch and its tasks went again).
    pub lines: i64,
    pub line_outcomes: BTreeMap<String, i64>,
    /// Done tasks whose answer came from a batch line, and from the live endpoint.
    pub done_by_batch: i64,
    pub done_live: i64,
    /// Tasks with more than one accepted answer (paid twice; not a duplicate rationale, which
    /// the ledger prevents, but worth seeing when a run crosses from batch to live).
    pub accepted_twice: i64,
}

impl BatchFigures {
    /// Nothing sent to the provider twice and nothing left open.
    pub fn ok(&self) -> bool {
        self.duplicate_submissions == 0 && self.provider_batches_without_row == 0 && self.rows_open == 0
    }

    pub fn render(&self) -> String {
        let outcomes: Vec<String> = self.line_outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(
            "batch ({}, route at end {}{}): rows {} ({} submitted, {} failed, {} open)  provider batches {}\n\
             duplicate batch submissions {}  provider batches without a row {}\n\
             create answers lost {}  calls refused (overloaded) {}  cancelled at the provider {}\n\
             lines {} ({:.0} prompt tokens each): {}\n\
             tasks done by batch {}  live {}  accepted twice {}\n",
            self.protocol,
            self.route,
            if self.spilled { ", spilled" } else { "" },
            self.rows,
            self.rows_submitted,
            self.rows_failed,
            self.rows_open,
            self.provider_batches,
            self.duplicate_submissions,
            self.provider_batches_without_row,
            self.create_answers_lost,
            self.overloaded,
            self.provider_cancelled,
            self.lines,
            self.prompt_tokens_per_line,
            outcomes.join(", "),
            self.done_by_batch,
            self.done_live,
            self.accepted_twice,
        )
    }
}

impl ChaosReport {
    /// Every task done or dead-lettered with a reason, one rationale per done task; with the
    /// batch path, no batch sent twice.
    pub fn ok(&self) -> bool {
        self.unfinished == 0
            && self.duplicates == 0
            && self.missing == 0
            && self.rationales == self.done
            && self.batch.as_ref().is_none_or(BatchFigures::ok)
    }

    pub fn render(&self) -> String {
        let batch = self.batch.as_ref().map(BatchFigures::render).unwrap_or_default();
        format!(
            "tasks {}  done {}  dead-lettered {}  failed (other) {}  unfinished {}\n\
             rationales {}  duplicates {}  missing {}\n\
             teacher requests {} ({:.3} per task; {:.3} net of {} injected faults)\n\
             kills {}  broker cuts {}  postgres restarts {}\n\
             {:.1} s, {:.0} tasks/s\n{batch}",
            self.tasks,
            self.done,
            self.dead_lettered,
            self.failed_other,
            self.unfinished,
            self.rationales,
            self.duplicates,
            self.missing,
            self.teacher_requests,
            self.calls_per_task,
            self.calls_per_task_net_of_faults,
            self.injected_faults,
            self.kills,
            self.broker_cuts,
            self.postgres_restarts,
            self.seconds,
            self.tasks_per_second
        )
    }
}

struct Workers {
    config: PathBuf,
    bin: PathBuf,
    children: Vec<Child>,
    started: u32,
    /// `ChaosConfig::worker_logs`.
    logs: Option<PathBuf>,
}

impl Workers {
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let name = format!("chaos-{}", self.started);
        let (filter, stderr) = match &self.logs {
            Some(dir) => {
                let path = dir.join(format!("{name}.log"));
                let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let filter =
                    std::env::var("CHAOS_WORKER_RUST_LOG").unwrap_or_else(|_| "warn,reasonrec_worker=info".into());
                (filter, Stdio::from(file))
            }
            None => ("error".to_string(), Stdio::null()),
        };
        let child = Command::new(&self.bin)
            .args(["--config", &self.config.display().to_string(), "worker", "--name", &name])
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.children.push(child);
        Ok(())
    }

    fn kill_one(&mut self, rng: &mut impl Rng) -> anyhow::Result<()> {
        if self.children.is_empty() {
            return Ok(());
        }
        let i = rng.random_range(0..self.children.len());
        let mut child = self.children.swap_remove(i);
        let killed = child.kill();
        child.wait()?;
        killed?;
        Ok(())
    }

    fn stop_all(&mut self) {
        for c in &self.children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write_worker_config(env: &TestEnv, cfg: &ChaosConfig, broker_url: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let s = &env.settings;
    let ep = &s.teacher.endpoints[0];
    let delays = format!("{:?}", s.broker.retry_delays_secs);
    let text = format!(
        "[database]\nurl = {:?}\nmax_connections = 8\nacquire_timeout_secs = 5\n\
         [broker]\nurl = {broker_url:?}\nprefix = {:?}\nretry_delays_secs = {delays}\nmax_retries = {}\n\
         [prompts]\ndir = {:?}\n\
         [worker]\nconcurrency = {}\nshutdown_grace_secs = 5\n\
         [teacher]\nbackoff_min_ms = 20\nbackoff_max_ms = 1000\nmax_attempts = 6\n\
         [[teacher.endpoints]]\nname = \"mock\"\nbase_url = {:?}\nmodel = \"mock-teacher\"\ntimeout_secs = 3\n\
         max_in_flight = {}\n{}",
        s.database.url,
        s.broker.prefix,
        s.broker.max_retries,
        s.prompts.dir.display().to_string(),
        cfg.concurrency,
        ep.base_url,
        cfg.concurrency,
        batch_config(s),
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The `[batch]` section and the batch endpoint of `s` in the workers' config (nothing when the
/// settings have no batch endpoint), so their submitters work as the run was planned.
fn batch_config(s: &reasonrec_core::Settings) -> String {
    let Some(ep) = s.teacher.endpoints.iter().find(|e| e.mode == EndpointMode::Batch) else {
        return String::new();
    };
    let b = &s.batch;
    format!(
        "[batch]\npoll_ms = {}\nfirst_lines = {}\nmax_lines = {}\nmax_open = {}\nturnaround_secs = {}\n\
         live_tasks_per_sec = {:?}\n\
         [[teacher.endpoints]]\nname = {:?}\nbase_url = {:?}\nprotocol = {:?}\nmodel = {:?}\nmode = \"batch\"\n\
         timeout_secs = {}\nprice_input_per_mtok = {:?}\nprice_output_per_mtok = {:?}\n",
        b.poll_ms,
        b.first_lines,
        b.max_lines,
        b.max_open,
        b.turnaround_secs,
        b.live_tasks_per_sec,
        ep.name,
        ep.base_url,
        ep.protocol.as_str(),
        ep.model,
        ep.timeout_secs,
        ep.price_input_per_mtok,
        ep.price_output_per_mtok,
    )
}

/// The batch path's figures of `run_id` once it ended.
async fn batch_figures(
    env: &TestEnv,
    b: &BatchChaos,
    run_id: uuid::Uuid,
    stats: &reasonrec_mock_teacher::MockStats,
) -> anyhow::Result<BatchFigures> {
    let s = &env.store;
    let q = |sql: &'static str| crate::count(s, sql, run_id);
    let mut f = BatchFigures { protocol: b.protocol.to_string(), ..BatchFigures::default() };
    f.route = sqlx::query_scalar("SELECT route FROM runs WHERE id = $1").bind(run_id).fetch_one(s.pool()).await?;
    f.spilled = q("SELECT count(*) FROM runs WHERE id = $1 AND spilled_at IS NOT NULL").await? > 0;
    f.rows = q("SELECT count(*) FROM batches WHERE run_id = $1").await?;
    f.rows_submitted = q("SELECT count(*) FROM batches WHERE run_id = $1 AND provider_id IS NOT NULL").await?;
    f.rows_failed = q("SELECT count(*) FROM batches WHERE run_id = $1 AND state = 'failed'").await?;
    f.rows_open = q(OPEN_BATCHES_SQL).await?;
    // The mock serves this run only: its batches are all this run's.
    f.provider_batches = stats.batches_created;
    f.duplicate_submissions = stats.batches_repeating_custom_ids;
    f.provider_batches_without_row = i64::try_from(stats.batches_created)? - f.rows_submitted;
    f.create_answers_lost = stats.batch_create_responses_lost;
    f.overloaded = stats.batch_overloaded;
    f.provider_cancelled = stats.batches_cancelled;
    f.prompt_tokens_per_line = stats.batch_prompt_tokens as f64 / stats.batch_lines_succeeded.max(1) as f64;
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(l.outcome, '(batch ' || b.state || ')'), count(*)
         FROM batch_lines l JOIN batches b ON b.id = l.batch_id WHERE b.run_id = $1 GROUP BY 1",
    )
    .bind(run_id)
    .fetch_all(s.pool())
    .await?;
    f.lines = outcomes.iter().map(|(_, n)| n).sum();
    f.line_outcomes = outcomes.into_iter().collect();
    f.done_by_batch = q("SELECT count(DISTINCT l.task_id) FROM batch_lines l JOIN batches b ON b.id = l.batch_id
                         JOIN tasks t ON t.id = l.task_id
                         WHERE b.run_id = $1 AND l.outcome = 'done' AND t.state = 'done'")
    .await?;
    f.done_live = sqlx::query_scalar(
        "SELECT count(DISTINCT a.task_id) FROM attempts a JOIN tasks t ON t.id = a.task_id
         WHERE a.run_id = $1 AND a.error_class IS NULL AND a.endpoint = $2 AND t.state = 'done'",
    )
    .bind(run_id)
    .bind(LIVE_ENDPOINT)
    .fetch_one(s.pool())
    .await?;
    f.accepted_twice = q("SELECT count(*) FROM (SELECT task_id FROM attempts WHERE run_id = $1 AND error_class IS NULL
                          GROUP BY task_id HAVING count(*) > 1) twice")
    .await?;
    Ok(f)
}

/// Adds a batch endpoint of `batch.protocol` on the mock to `env`'s settings (the live one
/// stays, for the workers and for a spill) and sizes `[batch]` for a run of `tasks` tasks: many
/// batches ([`ChaosConfig::batch_lines`]) of which a few are open at once, polled every 300 ms.
fn add_batch_endpoint(env: &mut TestEnv, batch: &BatchChaos, tasks: usize) {
    let live = &env.settings.teacher.endpoints[0];
    let ep = EndpointSettings {
        name: BATCH_ENDPOINT.into(),
        base_url: live.base_url.clone(),
        protocol: batch.protocol,
        model: live.model.clone(),
        mode: EndpointMode::Batch,
        // A create left in flight by a killed submitter is searched for once it would have
        // timed out: short, so the next holder of the lock goes on soon.
        timeout_secs: 10,
        price_input_per_mtok: 2.0,
        price_output_per_mtok: 8.0,
        ..EndpointSettings::default()
    };
    env.settings.teacher.endpoints.push(ep);
    let b = &mut env.settings.batch;
    b.poll_ms = 300;
    b.first_lines = 20;
    b.max_lines = ChaosConfig::batch_lines(tasks);
    b.max_open = 4;
    b.turnaround_secs = 2;
    // After a spill the live endpoint (unlimited, so its rate is not known otherwise) is taken
    // to do this many tasks a second: the deadline keeps that much time for it.
    b.live_tasks_per_sec = 200.0;
}

/// Runs the scenario and reports what it saw. Errors only when the scenario itself cannot run
/// (or times out); a broken promise shows in the report (`ok() == false`).
pub async fn run(cfg: ChaosConfig) -> anyhow::Result<ChaosReport> {
    let pg = if cfg.restart_postgres { Some(PrivatePostgres::start()?) } else { None };
    let admin = match &pg {
        Some(p) => p.admin_url(),
        None => {
            std::env::var("REASONREC_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
        }
    };
    let mut env = TestEnv::on_server(cfg.faults.clone(), admin).await?;
    let work = tempfile::Builder::new().prefix("rr-chaos-").tempdir()?;

    // A generated MovieLens-shaped dataset: about six reasoning tasks per user.
    env.settings.sampling.splits = reasonrec_core::Split::ALL.to_vec();
    env.settings.sampling.train_targets_per_user = 4;
    let users = cfg.tasks.div_ceil(6) + cfg.tasks / 50 + 10;
    let data = work.path().join("data");
    generate_ml1m(&data, GenerateSpec { users, items: 1500, min_ratings: 30, max_ratings: 60, seed: cfg.seed })?;
    let ds = reasonrec_dataset::load("ml-1m", &data, "chaos")?;
    env.store.datasets().ingest(&ds).await?;

    // Broker through a proxy we can cut; short retry tiers so the scenario ends in minutes.
    let target: std::net::SocketAddr = "127.0.0.1:5672".parse()?;
    let proxy = TcpProxy::start(target).await?;
    let broker_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.settings.broker.retry_delays_secs = vec![1, 3, 5];
    env.settings.broker.max_retries = 20;
    env.settings.coordinator.republish_after_secs = 120;
    if let Some(b) = &cfg.batch {
        add_batch_endpoint(&mut env, b, cfg.tasks);
    }
    let config = write_worker_config(&env, &cfg, &broker_url, work.path())?;

    // With a batch endpoint in the settings the run is routed `batch`.
    let plan = create_run(&env.store, &env.settings, "chaos").await?;
    anyhow::ensure!(plan.tasks as usize >= cfg.tasks, "planned {} tasks, fewer than {}", plan.tasks, cfg.tasks);
    let run_id = plan.run_id;
    if let Some(dir) = &cfg.worker_logs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut coord_settings = env.settings.clone();
    coord_settings.broker.url = broker_url.clone();
    let stop = CancellationToken::new();
    let coordinator = {
        let (store, stop) = (env.store.clone(), stop.clone());
        tokio::spawn(async move { supervise(&store, &coord_settings, Target::Run(run_id), stop).await })
    };

    let mut workers =
        Workers { config, bin: cfg.reasonrec.clone(), children: Vec::new(), started: 0, logs: cfg.worker_logs.clone() };
    for _ in 0..cfg.workers {
        workers.spawn()?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut report = ChaosReport { tasks: plan.tasks as i64, ..Default::default() };
    let mut spill_at = cfg.batch.as_ref().and_then(|b| b.spill_at);
    let t0 = Instant::now();
    let mut last_kill = Instant::now();
    let finished_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state IN ('done', 'failed')";
    loop {
        if coordinator.is_finished() {
            break;
        }
        anyhow::ensure!(t0.elapsed() < cfg.timeout, "chaos run not finished after {:?}", cfg.timeout);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_kill.elapsed() >= cfg.kill_every {
            last_kill = Instant::now();
            workers.kill_one(&mut rng)?;
            workers.spawn()?;
            report.kills += 1;
        }
        // Faults are tied to progress, so they land inside the run whatever its speed.
        let finished = match crate::count(&env.store, finished_sql, run_id).await {
            Ok(n) => n as f64 / plan.tasks.max(1) as f64,
            Err(_) => continue, // Postgres is restarting
        };
        let next_cut = f64::from(report.broker_cuts + 1) / f64::from(cfg.broker_cuts + 1);
        if report.broker_cuts < cfg.broker_cuts && finished >= next_cut {
            let n = proxy.cut_all();
            tracing::warn!(connections = n, "chaos: cut every broker connection");
            report.broker_cuts += 1;
            if cfg.batch.is_some() {
                // Lost create answers all through the run, not only at its first batches: two
                // more at each cut, so that some meet a kill or the Postgres restart. A new seed
                // too, as a new config restarts the mock's fault draws.
                let mut m = env.mock.config();
                m.batch_lose_create_response += 2;
                m.seed = m.seed.wrapping_add(u64::from(report.broker_cuts));
                if let Err(e) = env.mock.set_config(m) {
                    tracing::warn!(error = %e, "chaos: cannot arm more lost create answers");
                }
            }
        }
        if let Some(at) = spill_at
            && finished >= at
        {
            match env.store.batches().set_run_deadline(run_id, Some(chrono::Utc::now())).await {
                Ok(()) => {
                    tracing::warn!(finished, "chaos: the run's deadline is now; it spills to the live endpoint");
                    spill_at = None;
                }
                Err(e) => tracing::warn!(error = %e, "chaos: cannot set the run's deadline; trying again"),
            }
        }
        if let Some(pg) = &pg
            && report.postgres_restarts == 0
            && finished >= 0.45
        {
            tracing::warn!("chaos: restarting the private Postgres");
            pg.restart()?;
            report.postgres_restarts += 1;
        }
    }
    let state = coordinator.await??;
    report.seconds = t0.elapsed().as_secs_f64();
    if cfg.batch.is_some() {
        // A holder killed between finishing a batch's tasks and closing its row leaves the row
        // open under a completed run; the next holder closes it (reading the results again
        // changes nothing). Give it that chance, without kills, before the count.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(30) {
            if matches!(crate::count(&env.store, OPEN_BATCHES_SQL, run_id).await, Ok(0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    workers.stop_all();
    stop.cancel();
    anyhow::ensure!(state == Some(reasonrec_core::stage::RunState::Completed), "run ended {state:?}");

    let s = &env.store;
    let q = |sql: &'static str| crate::count(s, sql, run_id);
    report.done = q("SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'").await?;
    report.dead_lettered =
        q("SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed' AND last_error LIKE 'dead-lettered:%'")
            .await?;
    report.failed_other =
        q("SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed'").await? - report.dead_lettered;
    report.unfinished = q("SELECT count(*) FROM tasks WHERE run_id = $1 AND state NOT IN ('done', 'failed')").await?;
    report.rationales = q("SELECT count(*) FROM outputs WHERE run_id = $1").await?;
    report.duplicates = q("SELECT count(*) FROM (SELECT task_id FROM outputs WHERE run_id = $1
                              GROUP BY task_id HAVING count(*) > 1) d")
    .await?;
    report.missing = q("SELECT count(*) FROM tasks t WHERE t.run_id = $1 AND t.state = 'done'
                           AND NOT EXISTS (SELECT 1 FROM outputs o WHERE o.key = t.output_key)")
    .await?;
    let stats = env.mock.stats();
    report.teacher_requests = stats.requests;
    report.injected_faults = stats.injected_429 + stats.injected_5xx + stats.hangs + stats.malformed;
    let tasks = report.tasks.max(1) as f64;
    report.calls_per_task = stats.requests as f64 / tasks;
    report.calls_per_task_net_of_faults = stats.requests.saturating_sub(report.injected_faults) as f64 / tasks;
    report.tasks_per_second = tasks / report.seconds.max(0.001);
    if let Some(b) = &cfg.batch {
        report.batch = Some(batch_figures(&env, b, run_id, &stats).await?);
    }
    drop(proxy);
    env.cleanup().await?;
    drop(pg);
    Ok(report)
}
