//! The soak scenario (issue 15): consecutive "nights", each a scheduled incremental run on data
//! changed by about 1 %, against a rate-limited mock teacher whose queue waits many times longer
//! than `republish_after`, with faults on, a worker killed mid-night and replaced, a plan that
//! dies on night 3, a template edited on night 4, a duplicate run cancelled on night 5, the
//! teacher model swapped on night 6, `run retry-failed` whenever a night ends with failures, and
//! retention on. Time is compressed by scaling the timeouts down (republish after 5 s while the
//! queue waits tens of seconds, and a task takes at most a few seconds with its Retry-After
//! waits), never by changing which one is longer.
//!
//! Used by `scripts/soak.sh` (the `soak` binary, seven nights) and by a shorter test in
//! `tests/tests/soak.rs`. At the end it checks with SQL: no lost task, no duplicate rationale,
//! no prompt that lacks an upstream output that exists (every done task's prompt is rendered
//! again from the final state and keyed), no run left `planning`, every night completed;
//! messages published and teacher calls per task; rows written and table sizes per night.

use crate::TestEnv;
use reasonrec_coordinator::schedule::{Fired, fire, parse_jobs};
use reasonrec_coordinator::{Outbox, create_run};
use reasonrec_core::key::OutputKey;
use reasonrec_core::settings::{RetentionSettings, RunRoute, SamplingParams, ScheduleJob};
use reasonrec_dataset::generate::{GenerateSpec, generate_ml1m};
use reasonrec_mock_teacher::{MockConfig, MockStats};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub nights: u32,
    /// Users of the generated MovieLens-shaped dataset (about 10 tasks each with three stages).
    pub users: usize,
    /// The teacher endpoint's own limit (the worker keeps to it): what makes the queue wait.
    pub requests_per_minute: u32,
    /// `coordinator.republish_after_secs`, scaled down with everything else.
    pub republish_after_secs: u64,
    pub concurrency: u16,
    pub faults: MockConfig,
    pub night_timeout: Duration,
    pub seed: u64,
}

impl SoakConfig {
    /// Teacher faults of the scenario: 2 % 5xx, 2 % 429 with Retry-After, 1 % malformed.
    pub fn faults() -> MockConfig {
        MockConfig {
            rate_5xx: 0.02,
            rate_429: 0.02,
            retry_after_secs: 1,
            rate_malformed: 0.01,
            latency_ms: 20,
            latency_jitter_ms: 30,
            ..MockConfig::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NightReport {
    pub night: u32,
    pub run_id: Uuid,
    /// What the night did besides its run.
    pub events: Vec<String>,
    /// Task rows the night's run wrote (carried-over tasks included).
    pub rows_written: i64,
    /// Tasks the night had to work (stale or new).
    pub to_work: u64,
    pub done: i64,
    pub failed_then_retried: i64,
    pub replanned: i64,
    /// Tasks with a message, and messages the broker confirmed for them.
    pub published_tasks: i64,
    pub messages_published: i64,
    /// Requests the mock served this night, and how many of them were injected faults.
    pub teacher_requests: u64,
    pub injected_faults: u64,
    pub seconds: f64,
    /// Bytes of tasks, edges, ledger and interactions after the night (and its pruning).
    pub corpus_bytes: i64,
    pub runs_pruned: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    pub nights: Vec<NightReport>,
    pub lost_tasks: i64,
    pub duplicate_rationales: i64,
    pub prompts_checked: i64,
    pub prompts_missing_upstream: i64,
    pub runs_left_planning: i64,
    pub nights_not_completed: i64,
    pub worker_kills: u32,
    /// (Σ messages published − re-plans − tasks put back by retry-failed) / Σ tasks published,
    /// over the nights: a re-planned or retried task needs its new message.
    pub messages_per_task: f64,
    /// (teacher requests − injected faults) / tasks worked, over the nights; a killed worker's
    /// in-flight calls are asked again, at most `concurrency` per kill.
    pub calls_per_task: f64,
    pub calls_bound: f64,
}

impl SoakReport {
    pub fn ok(&self) -> bool {
        self.lost_tasks == 0
            && self.duplicate_rationales == 0
            && self.prompts_missing_upstream == 0
            && self.runs_left_planning == 0
            && self.nights_not_completed == 0
            && self.messages_per_task <= 1.01
            && self.calls_per_task <= self.calls_bound
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "night  to_work  rows_written  done  retried  replanned  msgs/task  calls  faults  pruned  corpus_MB  secs  events\n",
        );
        for n in &self.nights {
            out.push_str(&format!(
                "{:>5}  {:>7}  {:>12}  {:>4}  {:>7}  {:>9}  {:>9.3}  {:>5}  {:>6}  {:>6}  {:>9.1}  {:>4.0}  {}\n",
                n.night,
                n.to_work,
                n.rows_written,
                n.done,
                n.failed_then_retried,
                n.replanned,
                (n.messages_published - n.replanned - n.failed_then_retried) as f64 / n.published_tasks.max(1) as f64,
                n.teacher_requests,
                n.injected_faults,
                n.runs_pruned,
                n.corpus_bytes as f64 / 1e6,
                n.seconds,
                n.events.join("; "),
            ));
        }
        out.push_str(&format!(
            "lost {}  duplicate rationales {}  prompts missing an upstream output {} of {}  runs left planning {}  \
             nights not completed {}\nmessages per task {:.4}  teacher calls per task net of faults {:.4} (bound {:.4})  \
             worker kills {}  -> {}\n",
            self.lost_tasks,
            self.duplicate_rationales,
            self.prompts_missing_upstream,
            self.prompts_checked,
            self.runs_left_planning,
            self.nights_not_completed,
            self.messages_per_task,
            self.calls_per_task,
            self.calls_bound,
            self.worker_kills,
            if self.ok() { "OK" } else { "BROKEN" }
        ));
        out
    }
}

const DATASET: &str = "soak";

fn faults_of(s: &MockStats) -> u64 {
    s.injected_429 + s.injected_5xx + s.malformed + s.hangs + s.over_limit + s.contradictions
}

/// Changes about 1 % of the users' data for the next night: one rating flipped per chosen user,
/// and one item's genres on even nights.
fn change_data(dir: &Path, night: u32, users: usize) -> anyhow::Result<()> {
    let ratings = dir.join("ratings.dat");
    let mut lines: Vec<String> = std::fs::read_to_string(&ratings)?.lines().map(String::from).collect();
    let every = 100usize;
    let chosen: std::collections::HashSet<String> =
        (0..users.div_ceil(every)).map(|k| (1 + (k * every + night as usize * 7) % users).to_string()).collect();
    let mut done = std::collections::HashSet::new();
    for line in lines.iter_mut() {
        let f: Vec<&str> = line.split("::").collect();
        if f.len() == 4 && chosen.contains(f[0]) && done.insert(f[0].to_string()) {
            let flipped = if f[2] > "3" { "1" } else { "5" };
            *line = format!("{}::{}::{flipped}::{}", f[0], f[1], f[3]);
        }
    }
    std::fs::write(&ratings, lines.join("\n") + "\n")?;
    if night.is_multiple_of(2) {
        let movies = dir.join("movies.dat");
        let bytes = std::fs::read(&movies)?;
        let mut out: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        let i = (night as usize * 13) % out.len().max(1);
        if let Some(line) = out.get_mut(i)
            && let Some(pos) = line.windows(2).rposition(|w| w == b"::")
        {
            line.truncate(pos + 2);
            line.extend_from_slice(if night.is_multiple_of(4) { b"Drama" } else { b"Comedy|Romance" });
        }
        std::fs::write(&movies, out.join(&b'\n'))?;
    }
    Ok(())
}

/// Runs the scenario. Errors only when it cannot run (or a night times out); a broken promise
/// shows in the report (`ok() == false`).
pub async fn run(cfg: SoakConfig) -> anyhow::Result<SoakReport> {
    let mut env = TestEnv::with_mock(cfg.faults.clone()).await?;
    let work = tempfile::Builder::new().prefix("rr-soak-").tempdir()?;
    env.full_method();
    env.settings.sampling.max_users = cfg.users;
    env.settings.coordinator.republish_after_secs = cfg.republish_after_secs;
    env.settings.worker.concurrency = cfg.concurrency;
    env.settings.broker.retry_delays_secs = vec![1, 2];
    env.settings.teacher.max_attempts = 2;
    env.settings.teacher.breaker_failures = 1_000;
    env.settings.teacher.endpoints[0].requests_per_minute = cfg.requests_per_minute;
    env.settings.retention = RetentionSettings { keep_completed: 2, keep_days: 0, on_schedule: true };
    env.settings.schedule.jobs =
        vec![ScheduleJob { name: "nightly".into(), cron: "0 3 * * *".into(), dataset: DATASET.into() }];
    let prompts = work.path().join("prompts");
    std::fs::create_dir_all(&prompts)?;
    for entry in std::fs::read_dir(crate::repo_root().join("prompts"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), prompts.join(entry.file_name()))?;
    }
    env.settings.prompts.dir = prompts.clone();
    let data = work.path().join("data");
    let spec =
        GenerateSpec { users: cfg.users, items: cfg.users * 2 + 50, min_ratings: 20, max_ratings: 30, seed: cfg.seed };
    generate_ml1m(&data, spec)?;
    let job = parse_jobs(&env.settings)?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no job"))?;

    let broker = env.broker().await?;
    let outbox = Outbox::configured(env.store.clone(), &broker, &env.settings.coordinator).await?;
    let mut report = SoakReport::default();
    let (mut worked, mut net_calls) = (0i64, 0u64);
    for night in 1..=cfg.nights {
        let t0 = Instant::now();
        let mut n = NightReport { night, ..NightReport::default() };
        if night > 1 {
            change_data(&data, night, cfg.users)?;
        }
        let ds = reasonrec_dataset::load("ml-1m", &data, DATASET)?;
        let dataset_id = env.store.datasets().ingest(&ds).await?.dataset_id();
        if night == 3 {
            // A planner that dies mid-way: its run stays `planning`, nobody holds its lock.
            let lock = env
                .store
                .planning()
                .create_run(dataset_id, &serde_json::json!({"soak": "dead plan"}), RunRoute::Live)
                .await?;
            lock.release().await;
            n.events.push("a plan died".into());
        }
        if night == 4 {
            let t = prompts.join("reasoning.movielens.j2");
            let text = std::fs::read_to_string(&t)?;
            std::fs::write(&t, text.replacen("[user]", "[user]\nThink step by step.", 1))?;
            n.events.push("reasoning template edited".into());
        }
        if night == 6 {
            env.settings.teacher.endpoints[0].model = "mock-teacher-v2".into();
            n.events.push("teacher model swapped".into());
        }
        let before = env.mock.stats();
        let run_id = match fire(&env.store, &env.settings, &job).await? {
            Fired::Created { run_id, to_work } => {
                n.to_work = to_work;
                run_id
            }
            Fired::Skipped { unfinished } => anyhow::bail!("night {night}: skipped for unfinished run {unfinished}"),
        };
        n.run_id = run_id;
        if night == 5 {
            // An operator starts a duplicate run by hand, and cancels it once it is published.
            let dup = create_run(&env.store, &env.settings, DATASET).await?.run_id;
            outbox.pump(dup).await?;
            env.store.runs().cancel(dup).await?;
            n.events.push("duplicate run cancelled".into());
        }
        let (killed, retried) = work_night(&env, &outbox, run_id, cfg.night_timeout).await?;
        report.worker_kills += killed;
        n.failed_then_retried = retried;
        if killed > 0 {
            n.events.push(format!("{killed} worker killed"));
        }
        let after = env.mock.stats();
        let c = env.store.runs().counts(run_id).await?;
        n.rows_written = c.total;
        n.done = c.done;
        n.replanned = c.replanned;
        n.published_tasks = c.published_ever;
        n.messages_published = c.messages_published;
        n.teacher_requests = after.requests - before.requests;
        n.injected_faults = faults_of(&after) - faults_of(&before);
        worked += c.done + c.failed - c.carried_done - c.carried_failed + retried;
        net_calls += n.teacher_requests - n.injected_faults;
        n.runs_pruned = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM runs WHERE pruned_at IS NOT NULL")
            .fetch_one(env.store.pool())
            .await? as usize;
        n.corpus_bytes = env.store.pruning().corpus_bytes().await?;
        n.seconds = t0.elapsed().as_secs_f64();
        tracing::warn!(night, to_work = n.to_work, seconds = n.seconds, "soak: night done");
        report.nights.push(n);
    }
    check(&env, &mut report).await?;
    let published: i64 = report.nights.iter().map(|n| n.published_tasks).sum();
    let messages: i64 = report.nights.iter().map(|n| n.messages_published - n.replanned - n.failed_then_retried).sum();
    report.messages_per_task = messages as f64 / published.max(1) as f64;
    report.calls_per_task = net_calls as f64 / worked.max(1) as f64;
    report.calls_bound = 1.01 + f64::from(report.worker_kills) * f64::from(cfg.concurrency) / worked.max(1) as f64;
    broker.close().await;
    env.cleanup().await?;
    Ok(report)
}

/// Works a night's run to completion with one worker, killed (its task aborted: no drain, no
/// acks) and replaced once a third is finished; a night that ends with failed tasks is retried
/// once (`run retry-failed`). Returns (workers killed, tasks retried).
async fn work_night(env: &TestEnv, outbox: &Outbox, run_id: Uuid, timeout: Duration) -> anyhow::Result<(u32, i64)> {
    let mut worker = env.spawn_worker("soak")?;
    let mut killed = 0;
    let total = crate::count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1", run_id).await?;
    let finished_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state IN ('done', 'failed')";
    let mut retried = 0;
    for pass in 0..2 {
        let drive = outbox.drive(run_id, Duration::from_millis(50));
        let mut drive = std::pin::pin!(tokio::time::timeout(timeout, drive));
        let state = loop {
            tokio::select! {
                r = &mut drive => break r??,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if killed == 0 && pass == 0 && crate::count(&env.store, finished_sql, run_id).await? * 3 >= total {
                        worker.join.abort();
                        worker = env.spawn_worker("soak-replacement")?;
                        killed += 1;
                    }
                }
            }
        };
        anyhow::ensure!(state == "completed", "run {run_id} ended {state}");
        let failed = env.store.runs().counts(run_id).await?.failed;
        if failed == 0 || pass == 1 {
            break;
        }
        retried = env.store.runs().retry_failed(run_id).await? as i64;
    }
    worker.shutdown().await?;
    Ok((killed, retried))
}

/// The end-of-scenario checks, with SQL over what is left (pruned runs have no tasks).
async fn check(env: &TestEnv, report: &mut SoakReport) -> anyhow::Result<()> {
    let s = &env.store;
    let scalar = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(s.pool()).await };
    report.lost_tasks = scalar(
        "SELECT count(*) FROM tasks t JOIN runs r ON r.id = t.run_id
         WHERE r.state = 'completed' AND t.state IN ('waiting', 'ready', 'published', 'batched')",
    )
    .await?;
    report.runs_left_planning = scalar("SELECT count(*) FROM runs WHERE state = 'planning'").await?;
    let nightly: Vec<Uuid> = report.nights.iter().map(|n| n.run_id).collect();
    report.nights_not_completed =
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE id = ANY($1) AND state <> 'completed'")
            .bind(&nightly)
            .fetch_one(s.pool())
            .await?;
    // A task made more answers than its prompts: one, plus one per re-plan.
    report.duplicate_rationales = scalar(
        "SELECT count(*) FROM tasks t
         WHERE (SELECT count(*) FROM outputs o WHERE o.task_id = t.id) > 1 + t.replanned",
    )
    .await?;
    // Every done task of the last night: its prompt rendered again from the final state must
    // give the key it is stored with (a prompt that lacked an upstream output would not).
    let last = nightly.last().copied().unwrap_or_default();
    let rows: Vec<(Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT t.id, o.model, o.params FROM tasks t JOIN outputs o ON o.key = t.output_key
         WHERE t.run_id = $1 AND t.state = 'done' ORDER BY t.id",
    )
    .bind(last)
    .fetch_all(s.pool())
    .await?;
    let prompts = reasonrec_core::PromptLibrary::load(&env.settings.prompts.dir)?;
    let cap = reasonrec_worker::render::PromptCap::from_settings(&env.settings);
    for (id, model, params) in rows {
        let task = s.tasks().load(id).await?;
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT output_key FROM tasks WHERE id = $1").bind(id).fetch_one(s.pool()).await?;
        let bundle =
            s.tasks().load_bundles(&[id]).await?.remove(&id).ok_or_else(|| anyhow::anyhow!("task {id} gone"))?;
        let prompt = reasonrec_worker::render::render_capped(s, &prompts, &bundle, cap).await?.prompt;
        let params: SamplingParams = serde_json::from_value(params)?;
        let key = OutputKey::compute_salted(task.stage, &prompt, &model, &params, OutputKey::salt_of(&task.input));
        report.prompts_checked += 1;
        if key.as_bytes() != stored.as_slice() {
            report.prompts_missing_upstream += 1;
            tracing::error!(task_id = %id, stage = %task.stage, "soak: the stored answer's prompt differs from the prompt rendered now");
        }
    }
    Ok(())
}
