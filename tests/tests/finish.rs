//! The batched finishing transaction (`Finishing::finish_tasks`), against the real Postgres: what a
//! worker's commit batch does to tasks, the ledger, attempt rows and dependents.

use reasonrec_coordinator::create_run;
use reasonrec_core::OutputKey;
use reasonrec_core::attempt::AttemptRecord;
use reasonrec_core::stage::Stage;
use reasonrec_store::finish::{Finish, FinishKind};
use reasonrec_store::tasks::NewOutput;
use reasonrec_tests::{TestEnv, count};
use uuid::Uuid;

fn output(key: OutputKey, text: &str) -> Option<Box<NewOutput>> {
    Some(Box::new(NewOutput {
        key,
        stage: Stage::ItemProfile,
        text: text.into(),
        template: "item_profile.movielens".into(),
        template_version: "test".into(),
        model: "m".into(),
        params: serde_json::json!({}),
        input_tokens: 10,
        output_tokens: 5,
        score: None,
    }))
}

fn attempt() -> AttemptRecord {
    AttemptRecord {
        id: Uuid::new_v4(),
        endpoint: "mock".into(),
        model: "m".into(),
        started_at: chrono::Utc::now(),
        duration_ms: 1,
        http_status: Some(200),
        error_class: None,
        error: None,
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_completes_fails_reuses_and_releases_dependents_once() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    let plan = env.plan_sample_run(5).await?;
    let run = plan.run_id;
    let s = &env.store;
    // Two item profiles that share a user-profile dependent, and an item profile it does not wait for.
    let (a, b, dependent): (Uuid, Uuid, Uuid) = sqlx::query_as(
        "SELECT d1.depends_on, d2.depends_on, d1.task_id
         FROM task_deps d1 JOIN task_deps d2 ON d2.task_id = d1.task_id AND d2.depends_on > d1.depends_on
         JOIN tasks t1 ON t1.id = d1.depends_on AND t1.stage = 'item_profile'
         JOIN tasks t2 ON t2.id = d2.depends_on AND t2.stage = 'item_profile'
         JOIN tasks r ON r.id = d1.task_id AND r.stage = 'user_profile'
         WHERE r.run_id = $1 LIMIT 1",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;
    let c: Uuid = sqlx::query_scalar(
        "SELECT id FROM tasks WHERE run_id = $1 AND stage = 'item_profile'
           AND id NOT IN (SELECT depends_on FROM task_deps WHERE task_id = $2) LIMIT 1",
    )
    .bind(run)
    .bind(dependent)
    .fetch_one(s.pool())
    .await?;
    let pending_before: i32 =
        sqlx::query_scalar("SELECT pending_deps FROM tasks WHERE id = $1").bind(dependent).fetch_one(s.pool()).await?;

    let key = OutputKey([7; 32]);
    let batch = vec![
        Finish {
            task_id: a,
            run_id: run,
            inputs_version: 0,
            kind: FinishKind::Complete { key, output: output(key, "profile A"), history_truncated: 0 },
            attempts: vec![attempt()],
        },
        // The same task again (a duplicate delivery in the same batch): no second effect.
        Finish {
            task_id: a,
            run_id: run,
            inputs_version: 0,
            kind: FinishKind::Complete { key, output: output(key, "profile A"), history_truncated: 0 },
            attempts: vec![attempt()],
        },
        Finish {
            task_id: b,
            run_id: run,
            inputs_version: 0,
            kind: FinishKind::Fail { error: "teacher: gave up".into() },
            attempts: vec![],
        },
        // Another task reusing A's answer by key.
        Finish {
            task_id: c,
            run_id: run,
            inputs_version: 0,
            kind: FinishKind::Complete { key, output: None, history_truncated: 0 },
            attempts: vec![],
        },
    ];
    let out = s.finishing().finish_tasks(&batch).await?;
    let flags: Vec<(bool, bool)> = out.iter().map(|c| (c.newly_done, c.output_inserted)).collect();
    assert_eq!(flags, vec![(true, true), (false, false), (true, false), (true, false)]);

    let state = |id: Uuid| async move {
        sqlx::query_scalar::<_, String>("SELECT state FROM tasks WHERE id = $1").bind(id).fetch_one(s.pool()).await
    };
    assert_eq!((state(a).await?, state(b).await?, state(c).await?), ("done".into(), "failed".into(), "done".into()));
    assert_eq!(env.outputs_made(run).await?, 1);
    assert_eq!(
        count(s, "SELECT count(*) FROM attempts WHERE run_id = $1", run).await?,
        2,
        "the duplicate's paid call is recorded too"
    );
    let pending_after: i32 =
        sqlx::query_scalar("SELECT pending_deps FROM tasks WHERE id = $1").bind(dependent).fetch_one(s.pool()).await?;
    assert_eq!(pending_after, pending_before - 2, "done A and failed B each count the dependent down once");

    // The same batch again (a redelivered batch) changes nothing.
    let again = s.finishing().finish_tasks(&batch).await?;
    assert!(again.iter().all(|c| !c.newly_done && !c.output_inserted));
    let pending_again: i32 =
        sqlx::query_scalar("SELECT pending_deps FROM tasks WHERE id = $1").bind(dependent).fetch_one(s.pool()).await?;
    assert_eq!(pending_again, pending_after);
    env.cleanup().await
}

/// `run cancel` crossing a commit batch (issue 15): a batch locks its tasks and then their
/// dependents, in id order each, while cancel locks the run's unfinished tasks in one ascending
/// pass, so a batch holding a high id and then reaching for a low one deadlocks with it. Here the
/// batch's side is played by hand in that order; cancel, which waits first, is the transaction
/// Postgres aborts, and it runs again instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cancel_that_deadlocks_with_a_commit_batch_runs_again() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.full_method();
    env.settings.sampling.max_users = 5;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    let s = &env.store;
    let (low, high): (Uuid, Uuid) = sqlx::query_as(
        "SELECT (SELECT id FROM tasks WHERE run_id = $1 ORDER BY id LIMIT 1),
                (SELECT id FROM tasks WHERE run_id = $1 ORDER BY id DESC LIMIT 1)",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;

    // The batch holds the high id ...
    let mut batch = s.pool().begin().await?;
    sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE").bind(high).execute(&mut *batch).await?;
    // ... cancel takes the low one and waits for the high one ...
    let cancel = tokio::spawn({
        let s = s.clone();
        async move { s.runs().cancel(run).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    while sqlx::query_scalar::<_, i64>(waiting).fetch_one(s.pool()).await? == 0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "cancel never waited for the batch's row");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ... and the batch reaches for the low one: a cycle. Cancel waited first, so its deadlock
    // check (after deadlock_timeout) finds it and Postgres aborts cancel's transaction.
    sqlx::query("UPDATE tasks SET pending_deps = pending_deps WHERE id = $1").bind(low).execute(&mut *batch).await?;
    batch.commit().await?;

    let cancelled = cancel.await?;
    assert!(cancelled.is_ok(), "cancel ran again after the deadlock: {cancelled:?}");
    let open =
        count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state IN ('waiting', 'ready', 'published')", run)
            .await?;
    assert_eq!(open, 0);
    env.cleanup().await
}
