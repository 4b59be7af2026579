//! Run lifecycle (issue 8): pause and resume, a budget at which a run pauses itself, priorities,
//! the run list, snapshots and the diff of two corpora.

use reasonrec_coordinator::{Outbox, create_run};
use reasonrec_mock_teacher::MockConfig;
use reasonrec_store::lifecycle::{Budget, PauseOutcome, ResumeOutcome, SnapshotOutcome};
use reasonrec_tests::{TestEnv, count, sample_copy};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const POLL: Duration = Duration::from_millis(50);

async fn tasks_of(env: &TestEnv, run: Uuid, filter: &str) -> anyhow::Result<i64> {
    count(&env.store, &format!("SELECT count(*) FROM tasks WHERE run_id = $1 AND {filter}"), run).await
}

/// Waits until `filter` holds for at least `n` tasks of the run.
async fn wait_tasks(env: &TestEnv, run: Uuid, filter: &str, n: i64) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while tasks_of(env, run, filter).await? < n {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "fewer than {n} tasks {filter}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until no task of the run is published and unfinished (the queue has drained).
async fn wait_drained(env: &TestEnv, run: Uuid) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while tasks_of(env, run, "state = 'published'").await? > 0 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "published tasks never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `outbox.drive(run)` in the background, as `run create --wait` runs it.
fn drive(outbox: &Arc<Outbox>, run: Uuid) -> tokio::task::JoinHandle<anyhow::Result<reasonrec_core::stage::RunState>> {
    let outbox = outbox.clone();
    tokio::spawn(async move { Ok(outbox.drive(run, POLL).await?) })
}

/// Publishes the run and works it with one in-process worker until it is completed.
async fn complete(env: &TestEnv, run: Uuid) -> anyhow::Result<()> {
    env.run_to_completion(run).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_run_publishes_nothing_and_resumes_to_completion() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(MockConfig { latency_ms: 40, ..MockConfig::default() }).await?;
    let plan = env.plan_sample_run(30).await?;
    let run = plan.run_id;
    let broker = env.broker().await?;
    let outbox = Arc::new(Outbox::new(env.store.clone(), &broker).await?.with_max_outstanding(4));
    let w = env.spawn_worker("w")?;
    let driving = drive(&outbox, run);
    wait_tasks(&env, run, "state = 'done'", 4).await?;

    assert_eq!(env.store.lifecycle().pause(run, "paused by hand").await?, PauseOutcome::Paused);
    assert_eq!(env.store.lifecycle().pause(run, "again").await?, PauseOutcome::AlreadyPaused);
    // What was published before the pause is still worked (a pass of the outbox already past its
    // check when the pause came may still publish its page: give it time to end)...
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_drained(&env, run).await?;
    let published = tasks_of(&env, run, "published_at IS NOT NULL").await?;
    let done = tasks_of(&env, run, "state = 'done'").await?;
    assert_eq!(done, published, "every message queued before the pause was worked");
    assert!(published < 30, "paused before the end ({published} published)");
    // ...and nothing more goes out while `drive` keeps polling (20 passes).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tasks_of(&env, run, "published_at IS NOT NULL").await?, published, "nothing published while paused");
    assert_eq!(tasks_of(&env, run, "state = 'ready'").await?, 30 - published);
    let l = env.store.lifecycle().get(run).await?;
    assert_eq!((l.state.as_str(), l.paused_reason.as_deref()), ("paused", Some("paused by hand")));
    assert!(!driving.is_finished(), "drive waits through a pause instead of returning");

    assert_eq!(env.store.lifecycle().resume(run).await?, ResumeOutcome::Resumed);
    assert_eq!(
        env.store.lifecycle().resume(run).await?,
        ResumeOutcome::NotPaused { state: reasonrec_core::RunState::Running }
    );
    let state = tokio::time::timeout(Duration::from_secs(60), driving).await???;
    assert_eq!(state, "completed");
    w.shutdown().await?;
    assert_eq!(tasks_of(&env, run, "state = 'done'").await?, 30);
    assert_eq!(env.mock.stats().ok, 30, "one teacher call per task");
    assert_eq!(env.store.lifecycle().get(run).await?.paused_reason, None, "resume clears the reason");
    assert_eq!(
        env.store.lifecycle().pause(run, "late").await?,
        PauseOutcome::NotRunning { state: reasonrec_core::RunState::Completed },
        "only a running run pauses"
    );
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_run_with_nothing_left_is_not_completed_until_resumed() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 10;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(run).await?.published, 10);
    env.store.lifecycle().pause(run, "paused by hand").await?;
    let w = env.spawn_worker("w")?;
    wait_tasks(&env, run, "state = 'done'", 10).await?;
    assert_eq!(env.store.runs().refresh_state(run).await?, "paused", "a paused run is not completed");
    let waited = tokio::time::timeout(Duration::from_millis(500), outbox.drive(run, POLL)).await;
    assert!(waited.is_err(), "drive keeps waiting on a paused run: {waited:?}");
    env.store.lifecycle().resume(run).await?;
    reasonrec_tests::drive_to_completion(&outbox, run, 30).await?;
    w.shutdown().await?;
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pauses_itself_at_its_budget_and_resumes_only_under_it() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 20;
    // $1000 per million tokens: every answer (hundreds of tokens) costs tenths of a dollar.
    env.settings.teacher.endpoints[0].price_input_per_mtok = 1000.0;
    env.settings.teacher.endpoints[0].price_output_per_mtok = 1000.0;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.store.lifecycle().set_budget(run, &Budget { usd: Some(0.5), tokens: None }).await?;
    let broker = env.broker().await?;
    let outbox = Arc::new(Outbox::new(env.store.clone(), &broker).await?.with_max_outstanding(2));
    let w = env.spawn_worker("w")?;
    let driving = drive(&outbox, run);

    let t0 = Instant::now();
    while env.store.lifecycle().get(run).await?.state != "paused" {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "the run never paused");
        anyhow::ensure!(!driving.is_finished(), "the run ended instead of pausing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_drained(&env, run).await?;
    let l = env.store.lifecycle().get(run).await?;
    let reason = l.paused_reason.unwrap_or_default();
    assert!(reason.starts_with("budget reached: $") && reason.ends_with(" of $0.5000"), "{reason}");
    let spend = env.store.lifecycle().spend(run).await?;
    assert!(spend.cost_usd >= 0.5 && spend.tokens > 0, "{spend:?}");
    let done = tasks_of(&env, run, "state = 'done'").await?;
    assert!(done < 20, "paused long before the end ({done} done)");
    assert_eq!(tasks_of(&env, run, "published_at IS NOT NULL").await?, done, "nothing published past the budget");

    // Still over: refused, and it says why. The status says it too.
    match env.store.lifecycle().resume(run).await? {
        ResumeOutcome::OverBudget { reason } => assert!(reason.starts_with("budget reached: $"), "{reason}"),
        other => panic!("resume over budget: {other:?}"),
    }
    let status = reasonrec_coordinator::status::run_status(&env.store, run).await?;
    assert_eq!(status.state, "paused");
    assert_eq!(status.budget, Budget { usd: Some(0.5), tokens: None });
    assert!(status.render().contains("paused: budget reached: $"), "{}", status.render());
    // The run list shows state, reason, progress, spend and budget.
    let listed = env.store.lifecycle().list_runs(10).await?;
    let json = serde_json::to_value(&listed)?;
    assert_eq!(json[0]["run_id"], serde_json::json!(run));
    assert_eq!(json[0]["dataset"], "sample");
    assert_eq!(json[0]["dataset_version"], 1);
    assert_eq!(json[0]["state"], "paused");
    assert_eq!(json[0]["paused_reason"], serde_json::json!(reason));
    assert_eq!(json[0]["priority"], 0);
    assert_eq!(
        (&json[0]["done"], &json[0]["failed"], &json[0]["total"]),
        (&serde_json::json!(done), &0.into(), &20.into())
    );
    assert_eq!(json[0]["spend"]["cost_usd"], serde_json::json!(spend.cost_usd));
    assert_eq!(json[0]["budget"], serde_json::json!({"usd": 0.5, "tokens": null}));

    // Raised: it resumes and completes.
    env.store.lifecycle().set_budget(run, &Budget { usd: Some(1000.0), tokens: None }).await?;
    assert_eq!(env.store.lifecycle().resume(run).await?, ResumeOutcome::Resumed);
    let state = tokio::time::timeout(Duration::from_secs(60), driving).await???;
    assert_eq!(state, "completed");
    w.shutdown().await?;
    assert_eq!(tasks_of(&env, run, "state = 'done'").await?, 20);
    assert_eq!(env.mock.stats().ok, 20);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_token_budget_pauses_the_run_before_anything_is_published() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 5;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.store.lifecycle().set_budget(run, &Budget { usd: None, tokens: Some(0) }).await?;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(run).await?.published, 0);
    let l = env.store.lifecycle().get(run).await?;
    assert_eq!((l.state.as_str(), l.paused_reason.as_deref()), ("paused", Some("budget reached: 0 of 0 tokens")));
    assert_eq!(outbox.pump(run).await?.published, 0, "still paused");
    env.store.lifecycle().set_budget(run, &Budget::default()).await?;
    assert_eq!(env.store.lifecycle().resume(run).await?, ResumeOutcome::Resumed);
    assert_eq!(outbox.pump(run).await?.published, 5);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_run_is_published_first() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 10;
    env.ingest_sample().await?;
    // The older run comes first by creation; priority must overtake it.
    let low = create_run(&env.store, &env.settings, "sample").await?.run_id;
    let high = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.store.lifecycle().set_priority(high, 5).await?;
    assert_eq!(env.store.runs().active().await?, vec![high, low]);

    let broker = env.broker().await?;
    let outbox = Outbox::new(env.store.clone(), &broker).await?.with_max_outstanding(3);
    // One busy pass (3 of each run), then an idle one, then the stop (already due) ends it.
    outbox.serve(POLL, std::future::ready(())).await?;
    for run in [high, low] {
        assert_eq!(tasks_of(&env, run, "state = 'published'").await?, 3, "each run has its own share");
    }
    let (high_last, low_first): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT (SELECT max(published_at) FROM tasks WHERE run_id = $1),
                (SELECT min(published_at) FROM tasks WHERE run_id = $2)",
    )
    .bind(high)
    .bind(low)
    .fetch_one(env.store.pool())
    .await?;
    assert!(high_last < low_first, "high-priority run published first: {high_last} vs {low_first}");
    // Messages leave the queue in that order too (FIFO).
    let ch = broker.channel().await?;
    let mut order = Vec::new();
    for _ in 0..6 {
        let got = ch
            .basic_get(broker.topology().work_queue.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
            .await?
            .ok_or_else(|| anyhow::anyhow!("queue is empty"))?;
        order.push(reasonrec_core::TaskMessage::decode(&got.delivery.data)?.run_id);
    }
    assert_eq!(order, [vec![high; 3], vec![low; 3]].concat());
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_name_completed_runs_once_and_freeze_them() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 8;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    let s = &env.store;
    assert_eq!(
        s.lifecycle().create_snapshot("nightly", run, None).await?,
        SnapshotOutcome::RunNotCompleted { state: reasonrec_core::RunState::Running }
    );
    complete(&env, run).await?;
    assert_eq!(s.lifecycle().create_snapshot("nightly", run, Some("first")).await?, SnapshotOutcome::Created);
    assert_eq!(s.lifecycle().create_snapshot("nightly", run, None).await?, SnapshotOutcome::NameTaken { run_id: run });
    let other = create_run(s, &env.settings, "sample").await?.run_id;
    complete(&env, other).await?;
    assert_eq!(
        s.lifecycle().create_snapshot("nightly", other, None).await?,
        SnapshotOutcome::NameTaken { run_id: run }
    );
    assert_eq!(
        s.lifecycle().create_snapshot("weekly", run, None).await?,
        SnapshotOutcome::Created,
        "a run may have two names"
    );

    assert_eq!(s.lifecycle().snapshot_run("nightly").await?, run);
    let list = s.lifecycle().snapshots().await?;
    let nightly = list.iter().find(|x| x.name == "nightly").ok_or_else(|| anyhow::anyhow!("not listed"))?;
    assert_eq!((nightly.run_id, nightly.note.as_deref()), (run, Some("first")));
    assert_eq!(nightly.done.get("reasoning"), Some(&8));
    let r = s.lifecycle().resolve_corpus("weekly").await?;
    assert_eq!((r.run_id, r.snapshot.as_deref(), r.state.as_str()), (run, Some("weekly"), "completed"));

    // The run stays completed: cancelling it or reopening it is refused, and changes nothing.
    let err = s.runs().cancel(run).await.err().ok_or_else(|| anyhow::anyhow!("cancel of a snapshotted run"))?;
    assert!(err.to_string().contains("is snapshotted (nightly, weekly)"), "{err}");
    sqlx::query("UPDATE tasks SET state = 'failed', output_key = NULL, last_error = 'x' WHERE id = (SELECT id FROM tasks WHERE run_id = $1 LIMIT 1)")
        .bind(other)
        .execute(s.pool())
        .await?;
    assert_eq!(s.runs().retry_failed(other).await?, 1, "an unsnapshotted run reopens");
    sqlx::query("UPDATE tasks SET state = 'failed', output_key = NULL, last_error = 'x' WHERE id = (SELECT id FROM tasks WHERE run_id = $1 LIMIT 1)")
        .bind(run)
        .execute(s.pool())
        .await?;
    assert!(s.runs().retry_failed(run).await.is_err(), "a snapshotted run does not reopen");
    assert_eq!(s.runs().get(run).await?.state, "completed");
    assert_eq!(tasks_of(&env, run, "state = 'failed'").await?, 1, "the refused retry rolled back");
    // Its row cannot be deleted from under the snapshot.
    let deleted = sqlx::query("DELETE FROM runs WHERE id = $1").bind(run).execute(s.pool()).await;
    assert!(deleted.is_err(), "the snapshot's foreign key keeps the run");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_diff_counts_what_changed_between_two_runs() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 12;
    let v1 = env.ingest_sample().await?;
    let a = create_run(&env.store, &env.settings, "sample").await?.run_id;
    complete(&env, a).await?;
    assert_eq!(env.store.lifecycle().create_snapshot("v1", a, None).await?, SnapshotOutcome::Created);
    let s = &env.store;

    // Version 2: one user's leave-last-out target (their latest rating, alone at its timestamp)
    // flips from like to dislike or back: only that user's reasoning task changes, label too.
    let users: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, ext_id FROM users WHERE dataset_id = $1 AND id < 12 ORDER BY id")
            .bind(v1)
            .fetch_all(s.pool())
            .await?;
    let mut flipped = None;
    let dir = sample_copy(|lines| {
        for (_, ext) in &users {
            let of_user: Vec<usize> =
                (0..lines.len()).filter(|&i| lines[i].split("::").next() == Some(ext.as_str())).collect();
            let ts = |i: usize| lines[i].split("::").nth(3).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
            let Some(&last) = of_user.iter().max_by_key(|&&i| ts(i)) else { continue };
            if of_user.iter().filter(|&&i| ts(i) == ts(last)).count() > 1 {
                continue;
            }
            let f: Vec<String> = lines[last].split("::").map(String::from).collect();
            let rating = if f[2].parse::<f32>().unwrap_or(0.0) > 3.0 { "1" } else { "5" };
            lines[last] = format!("{}::{}::{rating}::{}", f[0], f[1], f[3]);
            flipped = Some((ext.clone(), f[1].clone()));
            return;
        }
    })?;
    let (user, item) = flipped.ok_or_else(|| anyhow::anyhow!("no user with a single latest rating"))?;
    let ds = reasonrec_dataset::load("ml-1m", &dir, "sample")?;
    let _ = std::fs::remove_dir_all(&dir);
    s.datasets().ingest(&ds).await?;
    let requests = env.mock.stats().requests;
    let b = create_run(s, &env.settings, "sample").await?.run_id;
    complete(&env, b).await?;
    assert_eq!(env.mock.stats().requests, requests + 1, "only the changed prompt is asked again");

    let d = s.lifecycle().corpus_diff(s.lifecycle().resolve_corpus("v1").await?.run_id, b, 10).await?;
    let r = d.by_stage.get("reasoning").copied().unwrap_or_default();
    assert_eq!((r.added, r.removed, r.changed, r.label_changed, r.unchanged), (0, 0, 1, 1, 11), "{d:?}");
    assert_eq!(d.total, r);
    let changed = d.examples.get("changed").cloned().unwrap_or_default();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].subject, format!("u{user}:i{item}:test"));
    assert_ne!(changed[0].label_a, changed[0].label_b);
    assert!(!d.examples.contains_key("unchanged"), "no examples of unchanged tasks");

    // A run of more users adds theirs; seen from the other side, they are removed.
    env.settings.sampling.max_users = 14;
    let c = create_run(s, &env.settings, "sample").await?.run_id;
    complete(&env, c).await?;
    let d = s.lifecycle().corpus_diff(b, c, 1).await?;
    assert_eq!((d.total.added, d.total.removed, d.total.changed, d.total.unchanged), (2, 0, 0, 12), "{d:?}");
    assert_eq!(d.examples.get("added").map(Vec::len), Some(1), "examples are capped");
    let d = s.lifecycle().corpus_diff(c, b, 10).await?;
    assert_eq!((d.total.added, d.total.removed, d.total.changed, d.total.unchanged), (0, 2, 0, 12), "{d:?}");
    assert_eq!(d.examples.get("removed").map(Vec::len), Some(2));
    // A corpus against itself: nothing but unchanged.
    let d = s.lifecycle().corpus_diff(c, c, 10).await?;
    assert_eq!((d.total.added, d.total.removed, d.total.changed, d.total.unchanged), (0, 0, 0, 14));
    env.cleanup().await
}
