//! Test harness: every test gets its own Postgres database, its own broker names and its own
//! mock teacher on a free port, all real; everything is removed when the [`TestEnv`] drops.
//!
//! Environment: `REASONREC_TEST_PG` (admin URL, default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and `REASONREC_TEST_AMQP` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod chaos;
pub mod cli;
pub mod pg;
pub mod proxy;
pub mod soak;
pub mod teacher_calls;

use anyhow::Context;
use reasonrec_coordinator::{Outbox, RunPlan};
use reasonrec_core::PromptLibrary;
use reasonrec_core::settings::{EndpointSettings, QueueType, Settings};
use reasonrec_core::stage::TaskState;
use reasonrec_mock_teacher::{MockConfig, MockHandle};
use reasonrec_queue::Broker;
use reasonrec_store::Store;
use reasonrec_worker::batch::{BatchSubmitter, TickReport};
use reasonrec_worker::{TaskProcessor, Worker, WorkerCounters};
use sqlx::Connection;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn sample_dir() -> PathBuf {
    repo_root().join("data/sample/ml-1m")
}

fn admin_url() -> String {
    std::env::var("REASONREC_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("REASONREC_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn init_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A copy of the sample dataset in a fresh temporary folder, whose ratings.dat `edit` may change
/// (a new dataset version once ingested).
pub fn sample_copy(edit: impl FnOnce(&mut Vec<String>)) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rr-sample-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    for f in ["users.dat", "movies.dat", "ratings.dat"] {
        std::fs::copy(sample_dir().join(f), dir.join(f))?;
    }
    let mut lines: Vec<String> = std::fs::read_to_string(dir.join("ratings.dat"))?.lines().map(String::from).collect();
    edit(&mut lines);
    std::fs::write(dir.join("ratings.dat"), lines.join("\n") + "\n")?;
    Ok(dir)
}

/// A private database, broker namespace and mock teacher.
pub struct TestEnv {
    pub settings: Settings,
    pub store: Store,
    pub mock: MockHandle,
    db_name: String,
    admin_url: String,
    cleaned: bool,
}

impl TestEnv {
    pub async fn new() -> anyhow::Result<Self> {
        Self::with_mock(MockConfig::default()).await
    }

    pub async fn with_mock(mock_config: MockConfig) -> anyhow::Result<Self> {
        Self::on_server(mock_config, admin_url()).await
    }

    /// Like [`TestEnv::with_mock`], with the database on the Postgres server of `admin` (e.g. a
    /// [`pg::PrivatePostgres`] the test may stop and restart).
    pub async fn on_server(mock_config: MockConfig, admin: String) -> anyhow::Result<Self> {
        init_once();
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("rr_test_{}", &id[..16]);
        let mut conn = sqlx::PgConnection::connect(&admin).await.context("admin connection to Postgres")?;
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut conn).await?;
        conn.close().await?;
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());

        let mock = reasonrec_mock_teacher::spawn("127.0.0.1:0".parse()?, mock_config).await?;
        let mut settings = Settings::default();
        settings.database.url = format!("{base}/{db_name}");
        settings.database.max_connections = 8;
        settings.broker.url = amqp_url();
        settings.broker.prefix = format!("rr-test-{}", &id[..16]);
        settings.broker.queue_type = QueueType::Quorum;
        settings.prompts.dir = repo_root().join("prompts");
        settings.coordinator.poll_interval_ms = 50;
        settings.worker.concurrency = 16;
        settings.worker.shutdown_grace_secs = 5;
        settings.teacher.endpoints = vec![EndpointSettings {
            name: "mock".into(),
            base_url: mock.base_url(),
            timeout_secs: 5,
            ..EndpointSettings::default()
        }];
        settings.teacher.backoff_min_ms = 10;
        settings.teacher.backoff_max_ms = 200;
        settings.sampling.history_len = 10;
        // The spine's shape by default: one reasoning task (test split) per user, no profile
        // stages. Tests of the three-stage graph switch them on (`TestEnv::full_method`).
        settings.sampling.splits = vec![reasonrec_core::Split::Test];
        settings.stages.item_profile = false;
        settings.stages.user_profile = false;
        let store = Store::connect(&settings.database).await?;
        store.migrate().await?;
        Ok(Self { settings, store, mock, db_name, admin_url: admin, cleaned: false })
    }

    /// Switches on the whole method: three stages, all three splits.
    pub fn full_method(&mut self) {
        let defaults = Settings::default();
        self.settings.sampling.splits = defaults.sampling.splits;
        self.settings.stages = defaults.stages;
    }

    /// Ingests the bundled sample dataset as `sample`; returns its dataset id.
    pub async fn ingest_sample(&self) -> anyhow::Result<i64> {
        let ds = reasonrec_dataset::load("ml-1m", &sample_dir(), "sample")?;
        Ok(self.store.datasets().ingest(&ds).await?.dataset_id())
    }

    pub async fn broker(&self) -> anyhow::Result<Broker> {
        Ok(Broker::connect(&self.settings.broker, "test").await?)
    }

    /// Ingests the bundled sample and plans a run of its first `users` users (with the
    /// settings as they are: by default one reasoning task per user).
    pub async fn plan_sample_run(&mut self, users: usize) -> anyhow::Result<RunPlan> {
        self.settings.sampling.max_users = users;
        self.ingest_sample().await?;
        Ok(reasonrec_coordinator::create_run(&self.store, &self.settings, "sample").await?)
    }

    /// A broker connection and an outbox publishing through it.
    pub async fn outbox(&self) -> anyhow::Result<(Broker, Outbox)> {
        let broker = self.broker().await?;
        let outbox = Outbox::new(self.store.clone(), &broker).await?;
        Ok((broker, outbox))
    }

    /// Tasks of `run` in `state`.
    pub async fn tasks_in(&self, run: Uuid, state: TaskState) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM tasks WHERE run_id = $1 AND state = $2")
            .bind(run)
            .bind(state.as_str())
            .fetch_one(self.store.pool())
            .await?)
    }

    /// Every one of `run`'s `n` tasks is done, and the run paid for exactly `n` answers: one
    /// rationale per task, none twice.
    pub async fn expect_each_done_once(&self, run: Uuid, n: i64) -> anyhow::Result<()> {
        let (outputs, done) = (self.outputs_made(run).await?, self.tasks_in(run, TaskState::Done).await?);
        anyhow::ensure!(
            (outputs, done) == (n, n),
            "run {run}: {outputs} outputs and {done} done tasks, expected {n} of each"
        );
        Ok(())
    }

    /// Ledger outputs `run` made (answers it paid for, whichever task uses them now).
    pub async fn outputs_made(&self, run: Uuid) -> anyhow::Result<i64> {
        count(&self.store, "SELECT count(*) FROM outputs WHERE run_id = $1", run).await
    }

    pub fn processor(&self) -> anyhow::Result<TaskProcessor> {
        self.processor_on(self.store.clone())
    }

    fn processor_on(&self, store: Store) -> anyhow::Result<TaskProcessor> {
        let prompts = Arc::new(PromptLibrary::load(&self.settings.prompts.dir)?);
        Ok(TaskProcessor::from_settings(store, prompts, &self.settings)?)
    }

    /// Starts an in-process worker (its own broker connection, the test's database pool).
    pub fn spawn_worker(&self, name: &str) -> anyhow::Result<WorkerHandle> {
        self.spawn_worker_on(name, self.store.clone())
    }

    /// Starts an in-process worker that reaches Postgres through `store` (e.g. a pool whose
    /// connections go through a [`proxy::TcpProxy`]).
    pub fn spawn_worker_on(&self, name: &str, store: Store) -> anyhow::Result<WorkerHandle> {
        // The worker `reasonrec worker` runs, less the batch submitters (tests drive those).
        let worker = Worker::build(store, &self.settings, name.to_string())?.live_only();
        let stop = CancellationToken::new();
        let counters = Arc::new(WorkerCounters::default());
        let join = tokio::spawn(worker.run(stop.clone(), counters.clone()));
        Ok(WorkerHandle { stop, counters, join })
    }

    /// Publishes `run` and works it with one in-process worker until it is completed (two
    /// minutes at most).
    pub async fn run_to_completion(&self, run: Uuid) -> anyhow::Result<()> {
        let (broker, outbox) = self.outbox().await?;
        let w = self.spawn_worker("w")?;
        drive_to_completion(&outbox, run, 120).await?;
        w.shutdown().await?;
        broker.close().await;
        Ok(())
    }

    /// The batch submitters of the settings' `mode = "batch"` endpoints, on the test's pool.
    pub fn batch_submitters(&self) -> anyhow::Result<Vec<BatchSubmitter>> {
        self.batch_submitters_on(&self.store)
    }

    /// The batch submitters on `store` (a pool of their own, which a test closes to kill them as
    /// a dying process would: their connections, and so their transactions, end).
    pub fn batch_submitters_on(&self, store: &Store) -> anyhow::Result<Vec<BatchSubmitter>> {
        let prompts = Arc::new(PromptLibrary::load(&self.settings.prompts.dir)?);
        Ok(BatchSubmitter::from_settings(store, prompts, &self.settings)?)
    }

    /// Ticks `submitters` (every 20 ms) until `run` is completed; an error after `secs` seconds.
    /// Returns the ticks' reports summed.
    pub async fn tick_until_completed(
        &self,
        submitters: &[BatchSubmitter],
        run: Uuid,
        secs: u64,
    ) -> anyhow::Result<TickReport> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut sum = TickReport::default();
        loop {
            for s in submitters {
                sum.add(&s.tick().await?);
            }
            let state = self.store.runs().refresh_state(run).await?;
            if state == reasonrec_core::stage::RunState::Completed {
                return Ok(sum);
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "run {run} still {state} after {secs} s: {sum:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Runs `run` to completion with both paths at work: `submitters` ticking (every 50 ms) beside
    /// the outbox and a live worker ([`Self::run_to_completion`]). Returns the ticks' reports
    /// summed.
    pub async fn run_with_batches_to_completion(
        &self,
        submitters: &[BatchSubmitter],
        run: Uuid,
    ) -> anyhow::Result<TickReport> {
        let stop = tokio_util::sync::CancellationToken::new();
        let ticking = {
            let (subs, stop) = (submitters.to_vec(), stop.clone());
            tokio::spawn(async move {
                let mut sum = TickReport::default();
                while !stop.is_cancelled() {
                    for s in &subs {
                        sum.add(&s.tick().await?);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Ok::<_, anyhow::Error>(sum)
            })
        };
        let driven = self.run_to_completion(run).await;
        stop.cancel();
        let report = ticking.await??;
        driven?;
        Ok(report)
    }

    /// Drops the database and the broker objects now (Drop does it too, on a helper thread).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        self.store.close().await;
        cleanup(self.settings.clone(), self.db_name.clone(), self.admin_url.clone()).await
    }
}

async fn cleanup(settings: Settings, db_name: String, admin: String) -> anyhow::Result<()> {
    if let Ok(broker) = Broker::connect(&settings.broker, "test-cleanup").await {
        if let Ok(ch) = broker.channel().await {
            let _ = broker.topology().delete(&ch).await;
        }
        broker.close().await;
    }
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&mut conn).await?;
    Ok(())
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (settings, db, admin) = (self.settings.clone(), self.db_name.clone(), self.admin_url.clone());
        // A failed test still removes what it made: run the async cleanup on its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(cleanup(settings, db, admin));
            }
        })
        .join();
    }
}

pub struct WorkerHandle {
    pub stop: CancellationToken,
    pub counters: Arc<WorkerCounters>,
    pub join: tokio::task::JoinHandle<Result<(), reasonrec_worker::WorkerError>>,
}

impl WorkerHandle {
    pub async fn shutdown(self) -> anyhow::Result<Arc<WorkerCounters>> {
        self.stop.cancel();
        self.join.await??;
        Ok(self.counters)
    }
}

/// Publishes and follows a run until it is completed; an error after `secs` seconds or if it
/// ends in another state.
pub async fn drive_to_completion(
    outbox: &reasonrec_coordinator::Outbox,
    run_id: Uuid,
    secs: u64,
) -> anyhow::Result<()> {
    let poll = std::time::Duration::from_millis(50);
    let state = tokio::time::timeout(std::time::Duration::from_secs(secs), outbox.drive(run_id, poll)).await??;
    anyhow::ensure!(state == "completed", "run {run_id} ended {state}, not completed");
    Ok(())
}

/// How a scenario binary (`chaos`, `soak`) ends: prints the report's text and JSON, writes the
/// JSON to `json_path` when given; exit 0 when the report's checks passed.
pub fn finish_report(
    text: &str,
    report: &impl serde::Serialize,
    passed: bool,
    json_path: Option<&std::path::Path>,
) -> anyhow::Result<std::process::ExitCode> {
    print!("{text}");
    let json = serde_json::to_string_pretty(report)?;
    println!("{json}");
    if let Some(p) = json_path {
        std::fs::write(p, &json)?;
    }
    Ok(if passed { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

/// Polls `cond` every 20 ms until it holds; an error naming `what` once `within` has passed.
pub async fn wait_until<F, Fut>(what: &str, within: std::time::Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not reached within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Counts rows of a query returning one bigint.
pub async fn count(store: &Store, sql: &str, run_id: Uuid) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(run_id).fetch_one(store.pool()).await?)
}
