//! The overnight regime (issue 15): a slow, rate-limited teacher behind a queue that waits
//! longer than every timeout; finish events in every order; plans that die. Time is compressed
//! by scaling the timeouts down (republish after 1 s while the queue waits several seconds),
//! never by changing which one is longer.

use reasonrec_coordinator::{Outbox, create_run, unfinished_run};
use reasonrec_core::TaskMessage;
use reasonrec_core::key::OutputKey;
use reasonrec_core::settings::RunRoute;
use reasonrec_core::stage::Stage;
use reasonrec_store::Store;
use reasonrec_store::finish::{Finish, FinishKind};
use reasonrec_store::tasks::NewOutput;
use reasonrec_tests::{TestEnv, count};
use reasonrec_worker::Outcome;
use std::time::Duration;
use uuid::Uuid;

/// What the finishing tests read of a task row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Row {
    state: String,
    pending_deps: i32,
    released: bool,
    inputs_version: i32,
    replanned: i32,
}

async fn row(s: &Store, id: Uuid) -> anyhow::Result<Row> {
    Ok(sqlx::query_as("SELECT state, pending_deps, released, inputs_version, replanned FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_one(s.pool())
        .await?)
}

fn complete(task_id: Uuid, run_id: Uuid, inputs_version: i32, text: &str) -> Finish {
    let key = OutputKey(*blake_like(text));
    let output = NewOutput {
        key,
        stage: Stage::UserProfile,
        text: text.into(),
        template: "t".into(),
        template_version: "1".into(),
        model: "m".into(),
        params: serde_json::json!({}),
        input_tokens: 1,
        output_tokens: 1,
        score: None,
    };
    let kind = FinishKind::Complete { key, output: Some(Box::new(output)), history_truncated: 0 };
    Finish { task_id, run_id, inputs_version, kind, attempts: Vec::new() }
}

fn fail(task_id: Uuid, run_id: Uuid) -> Finish {
    Finish {
        task_id,
        run_id,
        inputs_version: 0,
        kind: FinishKind::Fail { error: "teacher: gave up".into() },
        attempts: vec![],
    }
}

/// A distinct 32-byte key per text (not a real content key: these outputs are written directly).
fn blake_like(text: &str) -> Box<[u8; 32]> {
    let mut k = [0u8; 32];
    for (i, b) in text.bytes().enumerate() {
        k[i % 32] = k[i % 32].wrapping_mul(31).wrapping_add(b);
    }
    Box::new(k)
}

/// A user-profile task `u` of `run`, made ready (its item profiles done), and a reasoning task
/// `r` that depends on it.
async fn chain(s: &Store, run: Uuid) -> anyhow::Result<(Uuid, Uuid)> {
    let (u, r): (Uuid, Uuid) = sqlx::query_as(
        "SELECT d.depends_on, d.task_id FROM task_deps d
         JOIN tasks u ON u.id = d.depends_on AND u.stage = 'user_profile'
         JOIN tasks r ON r.id = d.task_id AND r.stage = 'reasoning'
         WHERE r.run_id = $1 ORDER BY r.id LIMIT 1",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;
    let deps: Vec<Uuid> =
        sqlx::query_scalar("SELECT depends_on FROM task_deps WHERE task_id = $1").bind(u).fetch_all(s.pool()).await?;
    let batch: Vec<Finish> = deps.iter().map(|&id| complete(id, run, 0, &format!("item {id}"))).collect();
    s.finishing().finish_tasks(&batch).await?;
    anyhow::ensure!(row(s, u).await?.state == "ready", "u is ready once its item profiles are done");
    Ok((u, r))
}

/// Finishes every upstream task of `r` except `u` (done), so that `r` waits only on `u`.
async fn finish_other_deps(s: &Store, run: Uuid, r: Uuid, u: Uuid) -> anyhow::Result<()> {
    let others: Vec<Uuid> =
        sqlx::query_scalar("SELECT depends_on FROM task_deps WHERE task_id = $1 AND depends_on <> $2")
            .bind(r)
            .bind(u)
            .fetch_all(s.pool())
            .await?;
    let batch: Vec<Finish> = others.iter().map(|&id| complete(id, run, 0, &format!("other {id}"))).collect();
    s.finishing().finish_tasks(&batch).await?;
    Ok(())
}

async fn full_method_run(env: &mut TestEnv) -> anyhow::Result<Uuid> {
    env.full_method();
    env.settings.sampling.max_users = 3;
    env.ingest_sample().await?;
    Ok(create_run(&env.store, &env.settings, "sample").await?.run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_then_a_late_copy_counts_the_dependent_down_once_and_replans_it() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let run = full_method_run(&mut env).await?;
    let s = &env.store;
    let (u, r) = chain(s, run).await?;
    finish_other_deps(s, run, r, u).await?;
    assert_eq!(row(s, r).await?.pending_deps, 1, "r waits on u only");

    s.finishing().finish_tasks(&[fail(u, run)]).await?;
    let after_fail = row(s, r).await?;
    assert_eq!((after_fail.state.as_str(), after_fail.pending_deps), ("ready", 0), "released once by the failure");

    // The reasoning task runs without u's profile and is done.
    s.finishing().finish_tasks(&[complete(r, run, 0, "reasoning without u")]).await?;
    assert_eq!(row(s, r).await?.state, "done");

    // Had r been a batch answer re-asked live, its re-plan sends it back to its run's route.
    sqlx::query("UPDATE tasks SET live_reask = true WHERE id = $1").bind(r).execute(s.pool()).await?;
    // A late copy of u's message completes it: u is done, r is re-planned (not counted down).
    let out = s.finishing().finish_tasks(&[complete(u, run, 0, "profile u")]).await?;
    assert!(out[0].newly_done);
    assert_eq!(row(s, u).await?.state, "done");
    let replanned = row(s, r).await?;
    assert_eq!(
        replanned,
        Row { state: "ready".into(), pending_deps: 0, released: true, inputs_version: 1, replanned: 1 },
        "the dependent that ran without u's output runs again with it"
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM tasks WHERE id = $1").bind(r).fetch_one(s.pool()).await?;
    assert_eq!(reason.as_deref(), Some("upstream_changed"));
    let live: bool =
        sqlx::query_scalar("SELECT live_reask FROM tasks WHERE id = $1").bind(r).fetch_one(s.pool()).await?;
    assert!(!live, "a re-planned task starts afresh on its run's route");

    // A third copy of u changes nothing.
    let again = s.finishing().finish_tasks(&[complete(u, run, 0, "profile u")]).await?;
    assert!(!again[0].newly_done);
    assert_eq!(row(s, r).await?, replanned);
    let counts = s.runs().counts(run).await?;
    assert_eq!(counts.replanned, 1);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_never_counts_a_dependent_down_twice() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let run = full_method_run(&mut env).await?;
    let s = &env.store;
    let (u, r) = chain(s, run).await?;
    let pending = row(s, r).await?.pending_deps;
    assert!(pending >= 2, "r waits on u and at least one item profile");

    s.finishing().finish_tasks(&[fail(u, run)]).await?;
    assert_eq!(row(s, r).await?.pending_deps, pending - 1);
    assert!(s.runs().retry_failed(run).await? >= 1);
    assert_eq!(row(s, u).await?.state, "ready");
    // Fails again after the retry, and a dead letter of an old copy arrives too.
    s.finishing().finish_tasks(&[fail(u, run)]).await?;
    assert!(!s.tasks().record_dead_letter(u, run, "delivery limit").await?, "already failed");
    assert_eq!(row(s, r).await?.pending_deps, pending - 1, "counted down once, whatever came after");
    assert_eq!(row(s, r).await?.state, "waiting", "still waits on its other inputs");

    // Retried again and done this time: r is still waiting, so nothing to re-plan; r's count
    // stays right and it renders with u's output when it becomes ready.
    s.runs().retry_failed(run).await?;
    s.finishing().finish_tasks(&[complete(u, run, 0, "profile u at last")]).await?;
    let now = row(s, r).await?;
    assert_eq!((now.state.as_str(), now.pending_deps, now.inputs_version), ("waiting", pending - 1, 0));
    finish_other_deps(s, run, r, u).await?;
    assert_eq!((row(s, r).await?.state.as_str(), row(s, r).await?.pending_deps), ("ready", 0));
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_rendered_before_an_upstream_output_arrived_is_superseded() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let run = full_method_run(&mut env).await?;
    let s = &env.store;
    let (u, r) = chain(s, run).await?;
    finish_other_deps(s, run, r, u).await?;
    s.finishing().finish_tasks(&[fail(u, run)]).await?;
    // r is worked (rendered at inputs version 0) while u is retried and succeeds.
    s.runs().retry_failed(run).await?;
    s.finishing().finish_tasks(&[complete(u, run, 0, "profile u")]).await?;
    assert_eq!(row(s, r).await?.inputs_version, 1);
    let stale = s.finishing().finish_tasks(&[complete(r, run, 0, "reasoning without u")]).await?;
    assert!(stale[0].superseded && !stale[0].newly_done);
    assert_eq!(row(s, r).await?.state, "ready", "nothing moved");
    let fresh = s.finishing().finish_tasks(&[complete(r, run, 1, "reasoning with u")]).await?;
    assert!(fresh[0].newly_done);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_run_never_changes_through_a_late_copy() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 4;
    env.ingest_sample().await?;
    let s = &env.store;
    let plan = create_run(s, &env.settings, "sample").await?;
    let tasks: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE run_id = $1 ORDER BY id")
        .bind(plan.run_id)
        .fetch_all(s.pool())
        .await?;
    let [a, b, c, d] = tasks[..] else { anyhow::bail!("expected 4 tasks, got {}", tasks.len()) };
    s.finishing()
        .finish_tasks(&[fail(a, plan.run_id), complete(b, plan.run_id, 0, "b"), complete(c, plan.run_id, 0, "c")])
        .await?;
    s.finishing().finish_tasks(&[complete(d, plan.run_id, 0, "d")]).await?;
    assert_eq!(s.runs().refresh_state(plan.run_id).await?, "completed");
    s.lifecycle().create_snapshot("frozen", plan.run_id, None).await?;
    // A late copy of the failed task, and a dead letter: the frozen corpus stays as it is.
    let late = s.finishing().finish_tasks(&[complete(a, plan.run_id, 0, "late a")]).await?;
    assert!(!late[0].newly_done);
    assert!(!s.tasks().record_dead_letter(b, plan.run_id, "late").await?);
    assert_eq!(row(s, a).await?.state, "failed");
    assert_eq!(row(s, b).await?.state, "done");

    // A cancelled run: a copy finishing afterwards changes nothing either.
    let other = create_run(s, &env.settings, "sample").await?.run_id;
    let t: Uuid =
        sqlx::query_scalar("SELECT id FROM tasks WHERE run_id = $1 LIMIT 1").bind(other).fetch_one(s.pool()).await?;
    s.runs().cancel(other).await?;
    assert!(!s.finishing().finish_tasks(&[complete(t, other, 0, "after cancel")]).await?[0].newly_done);
    assert_eq!(row(s, t).await?.state, "cancelled");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_waiting_task_or_naming_another_stage_is_not_worked() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let run = full_method_run(&mut env).await?;
    let s = &env.store;
    let (u, r) = chain(s, run).await?;
    let processor = env.processor()?;
    let before = env.mock.stats().requests;
    let waiting = processor.process(&TaskMessage::new(r, run, Stage::Reasoning)).await?;
    assert!(matches!(waiting, Outcome::Skipped { .. }), "{waiting:?}");
    let wrong_stage = processor.process(&TaskMessage::new(u, run, Stage::Reasoning)).await?;
    assert!(matches!(wrong_stage, Outcome::Mismatch { .. }), "{wrong_stage:?}");
    let wrong_run = processor.process(&TaskMessage::new(u, Uuid::now_v7(), Stage::UserProfile)).await?;
    assert!(matches!(wrong_run, Outcome::Mismatch { .. }), "{wrong_run:?}");
    s.finishing().finish_tasks(&[fail(u, run)]).await?;
    let failed = processor.process(&TaskMessage::new(u, run, Stage::UserProfile)).await?;
    assert!(matches!(failed, Outcome::Skipped { .. }), "a failed task's copy is not asked again: {failed:?}");
    assert_eq!(env.mock.stats().requests, before, "no teacher call for any of them");
    assert_eq!(row(s, r).await?.state, "waiting");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_died_is_failed_and_the_dataset_goes_on_a_live_one_is_left_alone() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dataset = env.ingest_sample().await?;
    let s = &env.store;
    // A live planner holds its run's lock.
    let live = s.planning().create_run(dataset, &serde_json::json!({}), RunRoute::Live).await?;
    assert_eq!(unfinished_run(s, "sample").await?, Some(live.run_id()), "a live plan blocks a second run");
    assert_eq!(s.runs().get(live.run_id()).await?.state, "planning");
    // The planner dies: its connection (and lock) go away, the row stays `planning`.
    let dead = live.run_id();
    live.release().await;
    assert_eq!(unfinished_run(s, "sample").await?, None, "a dead plan does not block the dataset");
    assert_eq!(s.runs().get(dead).await?.state, "failed");
    let reason: Option<String> =
        sqlx::query_scalar("SELECT failed_reason FROM runs WHERE id = $1").bind(dead).fetch_one(s.pool()).await?;
    assert!(reason.is_some_and(|r| r.contains("planning died")));
    // The scheduler's tick now creates the next run.
    let job = reasonrec_coordinator::schedule::Job {
        name: "nightly".into(),
        dataset: "sample".into(),
        cron: std::str::FromStr::from_str("0 3 * * *").map_err(|e| anyhow::anyhow!("{e:?}"))?,
    };
    let fired = reasonrec_coordinator::schedule::fire(s, &env.settings, &job).await?;
    assert!(matches!(fired, reasonrec_coordinator::schedule::Fired::Created { .. }), "{fired:?}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_teacher_behind_a_long_queue_gets_each_task_published_and_asked_once() -> anyhow::Result<()> {
    // 40 tasks at ~8 answers/s (2 in flight, 250 ms each): the last message waits ~5 s in the
    // queue, five times `republish_after`.
    let mock = reasonrec_mock_teacher::MockConfig { latency_ms: 250, ..Default::default() };
    let mut env = TestEnv::with_mock(mock).await?;
    env.settings.worker.concurrency = 2;
    let plan = env.plan_sample_run(40).await?;
    let broker = env.broker().await?;
    let outbox = Outbox::new(env.store.clone(), &broker).await?.with_republish_after(Duration::from_secs(1));
    let w = env.spawn_worker("slow")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 120).await?;
    w.shutdown().await?;
    let c = env.store.runs().counts(plan.run_id).await?;
    assert_eq!(c.done, 40);
    assert_eq!((c.published_ever, c.messages_published), (40, 40), "one message per task");
    assert_eq!(env.mock.stats().requests, 40, "one teacher call per task");
    assert_eq!(c.teacher_calls, 40);
    let s = &env.store;
    assert_eq!(count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND publishes <> 1", plan.run_id).await?, 0);
    broker.close().await;
    env.cleanup().await
}

/// Upstream outputs that keep arriving while a task is asked (issue 15): each answer is
/// superseded and the task rendered again; after three renders the worker hands the message back
/// (`InputsKeptChanging`, retryable) with every paid call recorded and the task untouched, and
/// the next delivery, once the inputs hold still, completes it. The arrivals are played by SQL
/// (a new text of `u`'s output and a new inputs version of `r`, what the store's replan path
/// writes; that path itself is tested above), so they can come during every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_inputs_keep_changing_is_handed_back_with_every_call_recorded() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(reasonrec_mock_teacher::MockConfig {
        latency_ms: 300,
        ..reasonrec_mock_teacher::MockConfig::default()
    })
    .await?;
    let run = full_method_run(&mut env).await?;
    let s = env.store.clone();
    let (u, r) = chain(&s, run).await?;
    finish_other_deps(&s, run, r, u).await?;
    s.finishing().finish_tasks(&[complete(u, run, 0, "profile u")]).await?;
    assert_eq!(row(&s, r).await?.state, "ready");

    let stop = tokio_util::sync::CancellationToken::new();
    let arrivals = tokio::spawn({
        let (s, stop) = (s.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                sqlx::query("UPDATE outputs SET text = text || ' and more' WHERE key = (SELECT output_key FROM tasks WHERE id = $1)")
                    .bind(u)
                    .execute(s.pool())
                    .await?;
                sqlx::query("UPDATE tasks SET inputs_version = inputs_version + 1 WHERE id = $1")
                    .bind(r)
                    .execute(s.pool())
                    .await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    let processor = env.processor()?;
    let msg = TaskMessage::new(r, run, Stage::Reasoning);
    let handed_back = processor.process(&msg).await;
    stop.cancel();
    arrivals.await??;
    match &handed_back {
        Err(e @ reasonrec_worker::WorkerError::InputsKeptChanging { renders: 3, .. }) => assert!(e.is_retryable()),
        other => panic!("expected the message handed back after three renders, got {other:?}"),
    }
    assert_eq!(env.mock.stats().ok, 3, "one call per render");
    let recorded = count(&s, "SELECT count(*) FROM attempts WHERE task_id = $1", r).await?;
    assert_eq!(recorded, 3, "every paid call is in the ledger");
    let after = row(&s, r).await?;
    assert_eq!(after.state, "ready", "superseded answers moved nothing");

    let done = processor.process(&msg).await?;
    assert!(matches!(done, Outcome::Completed { reused: false }), "{done:?}");
    assert_eq!(row(&s, r).await?.state, "done");
    env.cleanup().await
}
