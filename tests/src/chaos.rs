//! The chaos scenario: a run of reasoning tasks against a faulty mock teacher while worker
//! processes are killed with SIGKILL, every broker connection is cut through a TCP proxy the
//! scenario owns, and a private Postgres server (own data dir and port) is restarted.
//!
//! Used by `scripts/chaos.sh` (the `chaos` binary, 50,000 tasks) and by a shorter test in
//! `crates/cli/tests/chaos.rs`. Never touches the machine's shared RabbitMQ or Postgres beyond
//! its own names: the broker is reached through [`TcpProxy`], Postgres is [`PrivatePostgres`].

use crate::TestEnv;
use crate::pg::PrivatePostgres;
use crate::proxy::TcpProxy;
use anyhow::Context;
use rand::{Rng, SeedableRng};
use reasonrec_coordinator::{Target, create_run, supervise};
use reasonrec_dataset::generate::{GenerateSpec, generate_ml1m};
use reasonrec_mock_teacher::MockConfig;
use serde::Serialize;
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
}

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
}

impl ChaosReport {
    /// Every task done or dead-lettered with a reason, one rationale per done task.
    pub fn ok(&self) -> bool {
        self.unfinished == 0 && self.duplicates == 0 && self.missing == 0 && self.rationales == self.done
    }

    pub fn render(&self) -> String {
        format!(
            "tasks {}  done {}  dead-lettered {}  failed (other) {}  unfinished {}\n\
             rationales {}  duplicates {}  missing {}\n\
             teacher requests {} ({:.3} per task; {:.3} net of {} injected faults)\n\
             kills {}  broker cuts {}  postgres restarts {}\n\
             {:.1} s, {:.0} tasks/s\n",
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
}

impl Workers {
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let name = format!("chaos-{}", self.started);
        let child = Command::new(&self.bin)
            .args(["--config", &self.config.display().to_string(), "worker", "--name", &name])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
         max_in_flight = {}\n",
        s.database.url,
        s.broker.prefix,
        s.broker.max_retries,
        s.prompts.dir.display().to_string(),
        cfg.concurrency,
        ep.base_url,
        cfg.concurrency,
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text)?;
    Ok(path)
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
    env.settings.sampling.splits = vec!["train".into(), "validation".into(), "test".into()];
    env.settings.sampling.train_targets_per_user = 4;
    let users = cfg.tasks.div_ceil(6) + cfg.tasks / 50 + 10;
    let data = work.path().join("data");
    generate_ml1m(&data, GenerateSpec { users, items: 1500, min_ratings: 30, max_ratings: 60, seed: cfg.seed })?;
    let ds = reasonrec_dataset::load("ml-1m", &data, "chaos")?;
    env.store.ingest_dataset(&ds).await?;

    // Broker through a proxy we can cut; short retry tiers so the scenario ends in minutes.
    let target: std::net::SocketAddr = "127.0.0.1:5672".parse()?;
    let proxy = TcpProxy::start(target).await?;
    let broker_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.settings.broker.retry_delays_secs = vec![1, 3, 5];
    env.settings.broker.max_retries = 20;
    env.settings.coordinator.republish_after_secs = 120;
    let config = write_worker_config(&env, &cfg, &broker_url, work.path())?;

    let plan = create_run(&env.store, &env.settings, "chaos").await?;
    anyhow::ensure!(plan.tasks as usize >= cfg.tasks, "planned {} tasks, fewer than {}", plan.tasks, cfg.tasks);
    let run_id = plan.run_id;

    let mut coord_settings = env.settings.clone();
    coord_settings.broker.url = broker_url.clone();
    let stop = CancellationToken::new();
    let coordinator = {
        let (store, stop) = (env.store.clone(), stop.clone());
        tokio::spawn(async move { supervise(&store, &coord_settings, Target::Run(run_id), stop).await })
    };

    let mut workers = Workers { config, bin: cfg.reasonrec.clone(), children: Vec::new(), started: 0 };
    for _ in 0..cfg.workers {
        workers.spawn()?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut report = ChaosReport { tasks: plan.tasks as i64, ..Default::default() };
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
    drop(proxy);
    env.cleanup().await?;
    drop(pg);
    Ok(report)
}
