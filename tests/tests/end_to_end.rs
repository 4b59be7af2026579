//! The whole path on the bundled sample: ingest -> plan -> publish -> two workers -> stored.

use reasonrec_coordinator::create_run;
use reasonrec_core::stage::TaskState;
use reasonrec_tests::{TestEnv, count};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_pair_gets_exactly_one_rationale() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.teacher.endpoints[0].price_input_per_mtok = 1.0;
    env.settings.teacher.endpoints[0].price_output_per_mtok = 4.0;
    env.ingest_sample().await?;
    let plan = create_run(&env.store, &env.settings, "sample").await?;
    assert_eq!(plan.tasks, 300, "one test-split reasoning task per sample user");

    let (broker, outbox) = env.outbox().await?;
    let w1 = env.spawn_worker("w1")?;
    let w2 = env.spawn_worker("w2")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 120).await?;
    let c1 = w1.shutdown().await?;
    let c2 = w2.shutdown().await?;
    let done = |c: &reasonrec_worker::WorkerCounters| c.completed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(done(&c1) + done(&c2), 300, "both workers together completed every task once");
    assert!(done(&c1) > 0 && done(&c2) > 0, "work was shared: {} / {}", done(&c1), done(&c2));

    let run = plan.run_id;
    let s = &env.store;
    assert_eq!(env.tasks_in(run, TaskState::Done).await?, 300);
    assert_eq!(
        count(s, "SELECT count(DISTINCT t.output_key) FROM tasks t JOIN outputs o ON o.key = t.output_key WHERE t.run_id = $1", run).await?,
        300,
        "each pair has its own stored rationale"
    );
    assert_eq!(env.outputs_made(run).await?, 300, "no extra ledger rows");
    assert_eq!(
        count(s, "SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class IS NULL AND input_tokens > 0 AND output_tokens > 0", run).await?,
        300,
        "one successful attempt with token usage per task"
    );
    assert_eq!(
        count(s, "SELECT count(*) FROM outputs WHERE run_id = $1 AND template = 'reasoning.movielens' AND length(template_version) = 16 AND model = 'mock-teacher'", run).await?,
        300,
        "every output records its template version and teacher model"
    );
    assert_eq!(count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND published_at IS NULL", run).await?, 0);

    // The prompts told the teacher the true label: the mock's answers per label match the DB's labels.
    let stats = env.mock.stats();
    let likes = count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND label", run).await?;
    assert_eq!(stats.ok, 300);
    assert_eq!(stats.by_kind.get("reasoning_like").copied().unwrap_or(0) as i64, likes);
    assert_eq!(stats.by_kind.get("reasoning_dislike").copied().unwrap_or(0) as i64, 300 - likes);

    // Prompt-aware answers: each rationale quotes its target's title.
    let quoting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks t JOIN runs r ON r.id = t.run_id
           JOIN items i ON i.dataset_id = r.dataset_id AND i.id = t.item_id
           JOIN outputs o ON o.key = t.output_key
         WHERE t.run_id = $1 AND strpos(o.text, '«' || i.title || '»') > 0",
    )
    .bind(run)
    .fetch_one(s.pool())
    .await?;
    assert_eq!(quoting, 300);

    let status = reasonrec_coordinator::status::run_status(s, run).await?;
    assert_eq!((status.planned, status.done, status.failed, status.published), (300, 300, 0, 300));
    assert_eq!(status.counts.teacher_calls, 300);
    let c = &status.counts;
    let expected = (c.input_tokens as f64 * 1.0 + c.output_tokens as f64 * 4.0) / 1e6;
    assert!(c.cost_usd > 0.0 && (c.cost_usd - expected).abs() < 1e-9, "cost {} vs {expected}", c.cost_usd);
    assert_eq!(status.projected_cost_usd, Some(c.cost_usd), "a finished run projects what it spent");
    assert_eq!(status.projected_tokens, Some(c.input_tokens + c.output_tokens));
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_that_keeps_failing_fails_tasks_with_their_error_and_cost_rows() -> anyhow::Result<()> {
    let mock = reasonrec_mock_teacher::MockConfig { rate_5xx: 1.0, ..Default::default() };
    let mut env = TestEnv::with_mock(mock).await?;
    env.settings.teacher.max_attempts = 3;
    // This test is about retries running out; keep the circuit breaker out of the way.
    env.settings.teacher.breaker_failures = 1_000;
    let plan = env.plan_sample_run(20).await?;
    assert_eq!(plan.tasks, 20);
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    // a run whose tasks all failed is still finished
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    let run = plan.run_id;
    let s = &env.store;
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed' AND last_error LIKE '%HTTP 50%'",
            run
        )
        .await?,
        20
    );
    assert_eq!(
        count(s, "SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class = 'server'", run).await?,
        60,
        "3 attempts each"
    );
    assert_eq!(count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND attempts = 3", run).await?, 20);
    assert_eq!(env.outputs_made(run).await?, 0);
    assert_eq!(env.mock.stats().injected_5xx, 60);
    broker.close().await;
    env.cleanup().await
}
