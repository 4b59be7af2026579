//! Provider Batch APIs (issue 17), against the mock speaking OpenAI Batch and Anthropic Message
//! Batches over real HTTP: a run routed to a batch endpoint never touches RabbitMQ; its tasks
//! are claimed into batch rows before anything is sent; errored, expired and rejected lines come
//! back in later batches; a create whose answer was lost is found at the provider and adopted
//! (one batch there, not two); a cancelled run cancels its open batch and keeps what finished.

use reasonrec_coordinator::create_run;
use reasonrec_core::settings::{EndpointMode, EndpointSettings, Protocol, Reask};
use reasonrec_mock_teacher::{MockConfig, MockHandle};
use reasonrec_store::StoreError;
use reasonrec_tests::{TestEnv, count};
use reasonrec_worker::error::WorkerError;
use uuid::Uuid;

fn key() -> Option<String> {
    std::env::var("PATH").ok()
}

/// A batch endpoint of `protocol` on `m`, its key read from `PATH` (a variable surely set).
fn batch_endpoint(m: &MockHandle, protocol: Protocol) -> EndpointSettings {
    EndpointSettings {
        name: format!("{protocol}-batch"),
        base_url: m.base_url(),
        protocol,
        model: "batch-mock".into(),
        api_key_env: Some("PATH".into()),
        mode: EndpointMode::Batch,
        timeout_secs: 10,
        price_input_per_mtok: 2.0,
        price_output_per_mtok: 8.0,
        ..EndpointSettings::default()
    }
}

async fn env_with(cfg: MockConfig, protocol: Protocol) -> anyhow::Result<(TestEnv, Uuid)> {
    let mut env = TestEnv::with_mock(cfg).await?;
    env.full_method();
    env.settings.teacher.endpoints = vec![batch_endpoint(&env.mock, protocol)];
    env.settings.batch.first_lines = 20;
    env.settings.batch.max_lines = 400;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    Ok((env, run))
}

async fn scalar(env: &TestEnv, sql: &str, run: Uuid) -> anyhow::Result<i64> {
    count(&env.store, sql, run).await
}

/// What every batch run must show at the end, whatever the faults.
async fn check_complete(env: &TestEnv, run: Uuid) -> anyhow::Result<()> {
    let tasks = scalar(env, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;
    let done = scalar(env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'", run).await?;
    let failed = scalar(env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed'", run).await?;
    assert!(tasks > 100, "{tasks}");
    assert_eq!(done + failed, tasks, "every task finished");
    assert!(done * 100 >= tasks * 95, "{done} of {tasks} done");
    let published = scalar(env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND publishes > 0", run).await?;
    assert_eq!(published, 0, "a batch run publishes nothing to RabbitMQ");
    // Every line that came back is one attempt row; every accepted answer is priced.
    let lines = scalar(
        env,
        "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id
         WHERE b.run_id = $1 AND l.outcome NOT IN ('reused')",
        run,
    )
    .await?;
    let attempts = scalar(env, "SELECT count(*) FROM attempts WHERE run_id = $1", run).await?;
    assert_eq!(attempts, lines, "one attempt row per line with a result");
    let unpriced = scalar(
        env,
        "SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class IS NULL AND NOT cost_usd > 0",
        run,
    )
    .await?;
    assert_eq!(unpriced, 0);
    // The answer was stored once per done task, under the key the line was rendered with.
    let keyed = scalar(
        env,
        "SELECT count(*) FROM tasks t JOIN outputs o ON o.key = t.output_key WHERE t.run_id = $1 AND t.state = 'done'",
        run,
    )
    .await?;
    assert_eq!(keyed, done);
    let open =
        scalar(env, "SELECT count(*) FROM batches WHERE run_id = $1 AND state NOT IN ('ended', 'failed')", run).await?;
    assert_eq!(open, 0, "no batch left open");
    Ok(())
}

#[tokio::test]
async fn an_openai_batch_run_completes_through_line_errors_expiry_and_reasks() -> anyhow::Result<()> {
    let cfg = MockConfig {
        api_key: key(),
        batch_line_error_rate: 0.05,
        batch_expire_rate: 0.05,
        rate_contradict: 0.05,
        seed: 5,
        ..MockConfig::default()
    };
    let (env, run) = env_with(cfg, Protocol::OpenAi).await?;
    let submitters = env.batch_submitters()?;
    let report = env.tick_until_completed(&submitters, run, 120).await?;
    check_complete(&env, run).await?;
    assert!(report.sent_back > 0 && report.reasked > 0, "faults were met: {report:?}");
    // Item profiles went out first and small; the graph had no barrier: the run's first batch is
    // `first_lines` long.
    let first: i64 =
        sqlx::query_scalar("SELECT lines::int8 FROM batches WHERE run_id = $1 ORDER BY created_at LIMIT 1")
            .bind(run)
            .fetch_one(env.store.pool())
            .await?;
    assert!(first <= 20, "{first}");
    let stats = env.mock.stats();
    let ours = scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND provider_id IS NOT NULL", run).await?;
    assert_eq!(stats.batches_created as i64, ours, "every batch at the provider is one of our rows: {stats:?}");
    // Half the price: the batch endpoint's answers cost batch_price_factor of the list price.
    let (tin, tout, cost): (i64, i64, f64) = sqlx::query_as(
        "SELECT sum(input_tokens)::int8, sum(output_tokens)::int8, sum(cost_usd)::float8 FROM attempts WHERE run_id = $1",
    )
    .bind(run)
    .fetch_one(env.store.pool())
    .await?;
    let list = (tin as f64 * 2.0 + tout as f64 * 8.0) / 1e6;
    assert!((cost - list * 0.5).abs() < 1e-9, "cost {cost}, list {list}");
    env.cleanup().await
}

#[tokio::test]
async fn an_anthropic_batch_run_completes_through_errored_and_expired_results() -> anyhow::Result<()> {
    let cfg = MockConfig {
        api_key: key(),
        batch_line_error_rate: 0.05,
        batch_expire_rate: 0.05,
        rate_contradict: 0.05,
        seed: 9,
        ..MockConfig::default()
    };
    let (env, run) = env_with(cfg, Protocol::Anthropic).await?;
    let submitters = env.batch_submitters()?;
    let report = env.tick_until_completed(&submitters, run, 120).await?;
    check_complete(&env, run).await?;
    assert!(report.sent_back > 0, "{report:?}");
    let stats = env.mock.stats();
    let ours = scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND provider_id IS NOT NULL", run).await?;
    assert_eq!(stats.batches_created as i64, ours, "{stats:?}");
    env.cleanup().await
}

/// The create reaches the provider but its answer is lost (the submitter might as well have died
/// between the provider's "created" and our record): the next submitter finds the batch at the
/// provider and adopts it. One batch there, not two; the run completes.
#[tokio::test]
async fn a_lost_create_answer_is_found_at_the_provider_not_sent_twice() -> anyhow::Result<()> {
    for protocol in [Protocol::OpenAi, Protocol::Anthropic] {
        let cfg = MockConfig { api_key: key(), batch_lose_create_response: 1, ..MockConfig::default() };
        let (mut env, run) = env_with(cfg, protocol).await?;
        env.settings.batch.max_open = 1;
        let first = env.batch_submitters()?;
        let r = first[0].tick().await?;
        assert_eq!((r.created, env.mock.stats().batches_created), (0, 1), "{protocol}: created, answer lost");
        let state: String = sqlx::query_scalar("SELECT state FROM batches WHERE run_id = $1")
            .bind(run)
            .fetch_one(env.store.pool())
            .await?;
        assert_eq!(state, "submitting", "{protocol}");
        drop(first);
        // A new submitter (a restart): reconciles before it sends anything.
        let second = env.batch_submitters()?;
        let r = second[0].tick().await?;
        assert_eq!(r.adopted, 1, "{protocol}: {r:?}");
        assert_eq!(env.mock.stats().batches_created, 1, "{protocol}: not submitted again");
        env.tick_until_completed(&second, run, 120).await?;
        check_complete(&env, run).await?;
        let stats = env.mock.stats();
        let ours =
            scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND provider_id IS NOT NULL", run).await?;
        assert_eq!(stats.batches_created as i64, ours, "{protocol}: {stats:?}");
        env.cleanup().await?;
    }
    Ok(())
}

/// A first tick whose create answer is lost, then a second create of the same file at the mock,
/// as another client call would have made it: two batches at OpenAI naming one row.
async fn second_copy_of_the_first_batch(env: &TestEnv) -> anyhow::Result<()> {
    let first = env.batch_submitters()?;
    first[0].tick().await?;
    drop(first);
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", key().unwrap_or_default());
    let list: serde_json::Value = http
        .get(format!("{}/batches", env.mock.base_url()))
        .header("authorization", &auth)
        .send()
        .await?
        .json()
        .await?;
    let original = &list["data"][0];
    let copy = serde_json::json!({
        "input_file_id": original["input_file_id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": original["metadata"],
    });
    let made =
        http.post(format!("{}/batches", env.mock.base_url())).header("authorization", &auth).json(&copy).send().await?;
    anyhow::ensure!(made.status().is_success(), "second create: {}", made.status());
    assert_eq!(env.mock.stats().batches_created, 2);
    Ok(())
}

/// A second copy's lines never stand for the task's last line: a line rejected in the adopted
/// batch is re-asked in the next with its conversation (one re-ask more), whatever the copy
/// answered for it meanwhile.
#[tokio::test]
async fn a_second_copy_does_not_hide_a_rejected_lines_conversation() -> anyhow::Result<()> {
    let cfg = MockConfig {
        api_key: key(),
        batch_lose_create_response: 1,
        rate_contradict: 0.5,
        seed: 3,
        ..MockConfig::default()
    };
    let mut env = TestEnv::with_mock(cfg).await?;
    // Reasoning only, so the first batch (and its copy) holds answers the validator rejects.
    env.settings.teacher.endpoints = vec![batch_endpoint(&env.mock, Protocol::OpenAi)];
    env.settings.batch.first_lines = 60;
    env.settings.batch.max_lines = 400;
    env.settings.batch.max_open = 1;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    second_copy_of_the_first_batch(&env).await?;
    let subs = env.batch_submitters()?;
    env.tick_until_completed(&subs, run, 120).await?;
    let (followed, broken): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE nx.reasks <> r.reasks + 1)
         FROM batch_lines r JOIN batches rb ON rb.id = r.batch_id
         JOIN LATERAL (SELECT n.reasks FROM batch_lines n JOIN batches nb ON nb.id = n.batch_id
                       WHERE n.task_id = r.task_id AND nb.copy_of IS NULL AND nb.created_at > rb.created_at
                       ORDER BY nb.created_at LIMIT 1) nx ON true
         WHERE rb.run_id = $1 AND rb.copy_of IS NULL AND r.outcome = 'rejected'",
    )
    .bind(run)
    .fetch_one(env.store.pool())
    .await?;
    let copied_rejections = scalar(
        &env,
        "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id
         WHERE b.run_id = $1 AND b.copy_of IS NOT NULL AND l.outcome = 'stale'",
        run,
    )
    .await?;
    assert!(
        followed > 0 && copied_rejections > 0,
        "{followed} rejected lines re-asked, {copied_rejections} copy lines stale"
    );
    assert_eq!(broken, 0, "a re-ask started afresh");
    env.cleanup().await
}

/// Two batches at OpenAI name one row (the create answer was lost, and a second create of the
/// same file reached the provider too): the oldest is adopted, the other is recorded as a copy,
/// cancelled, and what it finished is read and paid for: every batch's cost is its results'
/// attempts, and the run's spend counts both copies. No task is done twice.
#[tokio::test]
async fn a_second_copy_at_the_provider_is_cancelled_and_what_it_finished_is_paid_for() -> anyhow::Result<()> {
    let cfg = MockConfig { api_key: key(), batch_lose_create_response: 1, ..MockConfig::default() };
    let (mut env, run) = env_with(cfg, Protocol::OpenAi).await?;
    env.settings.batch.max_open = 1;
    second_copy_of_the_first_batch(&env).await?;

    let second = env.batch_submitters()?;
    let r = second[0].tick().await?;
    assert_eq!((r.adopted, r.duplicates_cancelled), (1, 1), "{r:?}");
    env.tick_until_completed(&second, run, 120).await?;
    check_complete(&env, run).await?;
    let (copies, copy_lines, copy_cost): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(b.lines), 0)::int8, COALESCE(sum(b.cost_usd), 0)::float8 FROM batches b
         WHERE b.run_id = $1 AND b.copy_of IS NOT NULL AND b.state = 'ended' AND b.cancel_requested_at IS NOT NULL",
    )
    .bind(run)
    .fetch_one(env.store.pool())
    .await?;
    assert_eq!(copies, 1, "the copy is a row of its own, cancelled and ended");
    let rows = scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND provider_id IS NOT NULL", run).await?;
    assert_eq!(rows, env.mock.stats().batches_created as i64, "every batch at the provider is a row");
    // The copy finished its lines before the cancel reached it (0 s turnaround): each one an
    // attempt with its cost, and the batches' costs add up to the run's spend.
    let read = scalar(
        &env,
        "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id
         WHERE b.run_id = $1 AND b.copy_of IS NOT NULL AND l.outcome IS NOT NULL",
        run,
    )
    .await?;
    assert!(copy_lines > 0 && read == copy_lines && copy_cost > 0.0, "{read} of {copy_lines} lines read, ${copy_cost}");
    let (batches, attempts): (f64, f64) = sqlx::query_as(
        "SELECT (SELECT sum(cost_usd) FROM batches WHERE run_id = $1)::float8,
                (SELECT sum(cost_usd) FROM attempts WHERE run_id = $1)::float8",
    )
    .bind(run)
    .fetch_one(env.store.pool())
    .await?;
    assert!((batches - attempts).abs() < 1e-9, "batches ${batches}, attempts ${attempts}");
    // Both copies answered the copied lines: each of those tasks has two accepted (paid)
    // answers on record, and one output.
    let answered_twice = scalar(
        &env,
        "SELECT count(*) FROM (SELECT task_id FROM attempts WHERE run_id = $1 AND error_class IS NULL
                               GROUP BY task_id HAVING count(*) = 2) t",
        run,
    )
    .await?;
    assert_eq!(answered_twice, copy_lines);
    env.cleanup().await
}

/// `run cancel` while a batch is at the provider: the batch is cancelled there, the lines that
/// finished are recorded (ledger and attempts), the tasks stay cancelled.
#[tokio::test]
async fn a_cancelled_run_cancels_its_open_batch_and_keeps_what_finished() -> anyhow::Result<()> {
    let cfg = MockConfig { api_key: key(), batch_turnaround_ms: 60_000, ..MockConfig::default() };
    let (mut env, run) = env_with(cfg, Protocol::Anthropic).await?;
    env.settings.batch.max_open = 1;
    let subs = env.batch_submitters()?;
    let r = subs[0].tick().await?;
    assert_eq!(r.created, 1);
    env.store.runs().cancel(run).await?;
    let mut ended = false;
    for _ in 0..200 {
        let r = subs[0].tick().await?;
        if r.ended > 0 {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ended, "the cancelled batch ended");
    assert_eq!(env.mock.stats().batches_cancelled, 1);
    let not_cancelled =
        scalar(&env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state NOT IN ('cancelled', 'done')", run)
            .await?;
    assert_eq!(not_cancelled, 0, "a cancelled run's tasks stay cancelled");
    let lines =
        scalar(&env, "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id WHERE b.run_id = $1", run)
            .await?;
    let attempts = scalar(&env, "SELECT count(*) FROM attempts WHERE run_id = $1", run).await?;
    assert_eq!(attempts, lines, "every line of the cancelled batch is recorded");
    // No new batch for a cancelled run.
    let r = subs[0].tick().await?;
    assert_eq!(r.created, 0);
    env.cleanup().await
}

/// A deadline the batches cannot meet at their turnaround: the submitter feeds batches while
/// they can end in time, then spills the run to the live endpoint (the outbox publishes what is
/// left) and cancels the batches that would end too late. Every task is done once: no line is
/// paid for by both a batch and a live call.
#[tokio::test]
async fn a_run_with_a_deadline_spills_to_live_endpoints_and_pays_no_line_twice() -> anyhow::Result<()> {
    let cfg = MockConfig { api_key: key(), batch_turnaround_ms: 1_500, ..MockConfig::default() };
    let mut env = TestEnv::with_mock(cfg).await?;
    env.full_method();
    let live = EndpointSettings {
        name: "live".into(),
        base_url: env.mock.base_url(),
        model: "batch-mock".into(),
        api_key_env: Some("PATH".into()),
        timeout_secs: 10,
        price_input_per_mtok: 2.0,
        price_output_per_mtok: 8.0,
        ..EndpointSettings::default()
    };
    env.settings.teacher.endpoints = vec![batch_endpoint(&env.mock, Protocol::OpenAi), live];
    env.settings.batch.first_lines = 20;
    env.settings.batch.max_lines = 600;
    env.settings.batch.max_open = 2;
    // An underestimate at first; the observed turnaround (1.5 s) takes over once batches end.
    env.settings.batch.turnaround_secs = 1;
    env.settings.batch.deadline = Some("2099-01-01T06:00:00Z".into());
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    let planned: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT deadline FROM runs WHERE id = $1").bind(run).fetch_one(env.store.pool()).await?;
    assert_eq!(planned.map(|d| d.to_rfc3339()).as_deref(), Some("2099-01-01T06:00:00+00:00"), "[batch] deadline");
    // The deadline counts from the run's start, not from before the ingest and the plan (slow on
    // a busy machine): room for a few batches, not for all of them.
    let deadline = chrono::Utc::now() + chrono::TimeDelta::seconds(6);
    env.store.batches().set_run_deadline(run, Some(deadline)).await?;
    // `run status` projects the batch work's end: nothing sent yet, so one round of `max_open`
    // batches at the configured turnaround (1 s) from now; and it shows the deadline.
    let t0 = chrono::Utc::now();
    let status = reasonrec_coordinator::status::run_status(&env.store, run).await?;
    let b = status.batches.as_ref().ok_or_else(|| anyhow::anyhow!("a batch run shows its batches"))?;
    assert_eq!(b.deadline.map(|d| d.timestamp_micros()), Some(deadline.timestamp_micros()));
    let projected = b.projected_finish.ok_or_else(|| anyhow::anyhow!("a projected finish"))?;
    assert!(projected > t0 && projected < t0 + chrono::TimeDelta::seconds(4), "{projected} vs {t0}");

    let report = env.run_with_batches_to_completion(&env.batch_submitters()?, run).await?;

    assert_eq!(report.spilled, 1, "{report:?}");
    let route: String =
        sqlx::query_scalar("SELECT route FROM runs WHERE id = $1").bind(run).fetch_one(env.store.pool()).await?;
    assert_eq!(route, "live");
    let tasks = scalar(&env, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;
    let done = scalar(&env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'", run).await?;
    assert_eq!(done, tasks);
    let by_batch = scalar(
        &env,
        "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id WHERE b.run_id = $1 AND l.outcome = 'done'",
        run,
    )
    .await?;
    let published = scalar(&env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND publishes > 0", run).await?;
    assert!(by_batch > 0 && published > 0, "both paths worked: {by_batch} by batch, {published} published");
    let paid_twice = scalar(
        &env,
        "SELECT count(*) FROM (SELECT task_id FROM attempts WHERE run_id = $1 AND error_class IS NULL
                               GROUP BY task_id HAVING count(*) > 1) twice",
        run,
    )
    .await?;
    assert_eq!(paid_twice, 0, "no task has two accepted answers");
    let open = scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND state NOT IN ('ended', 'failed')", run)
        .await?;
    assert_eq!(open, 0, "a batch still open would hold its tasks");
    let status = reasonrec_coordinator::status::run_status(&env.store, run).await?;
    let b = status.batches.as_ref().ok_or_else(|| anyhow::anyhow!("a spilled run still shows its batches"))?;
    assert_eq!((b.done_by_batch, b.done_by_batch + b.done_live), (by_batch, done), "batch and live counts");
    assert_eq!(b.projected_finish, None, "nothing left to project");
    env.cleanup().await
}

/// `reask = "live"` on the batch endpoint: a rejected batch answer is re-asked at once by the
/// live workers, not in the task's next batch. The live call carries the rejected answer and the
/// validator's reason on; only such tasks go live; no batch line is a re-ask.
#[tokio::test]
async fn rejected_batch_answers_are_reasked_live_when_the_endpoint_says_so() -> anyhow::Result<()> {
    let cfg = MockConfig {
        api_key: key(),
        rate_contradict: 0.2,
        record_requests: 100_000,
        seed: 17,
        ..MockConfig::default()
    };
    let mut env = TestEnv::with_mock(cfg).await?;
    env.full_method();
    let batch = EndpointSettings { reask: Reask::Live, ..batch_endpoint(&env.mock, Protocol::OpenAi) };
    let live = EndpointSettings {
        name: "live".into(),
        mode: EndpointMode::Live,
        ..batch_endpoint(&env.mock, Protocol::OpenAi)
    };
    env.settings.teacher.endpoints = vec![batch, live];
    env.settings.batch.first_lines = 20;
    env.settings.batch.max_lines = 400;
    env.settings.validate()?;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;

    let report = env.run_with_batches_to_completion(&env.batch_submitters()?, run).await?;

    assert!(report.reasked > 0, "answers were rejected: {report:?}");
    let tasks = scalar(&env, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;
    let finished =
        scalar(&env, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state IN ('done', 'failed')", run).await?;
    assert_eq!(finished, tasks, "every task finished");
    let in_batch = |sql: &'static str| {
        let env = &env;
        async move { scalar(env, sql, run).await }
    };
    let rejected_live = in_batch(
        "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id
         WHERE b.run_id = $1 AND l.outcome = 'rejected_live'",
    )
    .await?;
    assert_eq!(rejected_live, i64::from(report.reasked), "every rejected line went live");
    let batch_reasks = in_batch(
        "SELECT count(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id WHERE b.run_id = $1 AND l.reasks > 0",
    )
    .await?;
    assert_eq!(batch_reasks, 0, "no re-ask went into a batch");
    // Only the re-asked tasks went through RabbitMQ and the live endpoint.
    let live_not_reasked = in_batch(
        "SELECT count(*) FROM tasks t WHERE t.run_id = $1
           AND (t.publishes > 0 OR EXISTS (SELECT 1 FROM attempts a WHERE a.task_id = t.id AND a.endpoint = 'live'))
           AND NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.task_id = t.id AND l.outcome = 'rejected_live')",
    )
    .await?;
    assert_eq!(live_not_reasked, 0);
    let reasked_live = in_batch(
        "SELECT count(DISTINCT t.id) FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.endpoint = 'live'
         WHERE t.run_id = $1 AND t.publishes > 0",
    )
    .await?;
    assert_eq!(reasked_live, rejected_live, "each rejected task was asked live");
    // Each live call of a re-asked task carried the batch's rejected answer and its reason on.
    let rejected: Vec<String> = sqlx::query_scalar(
        "SELECT l.conversation -> -1 ->> 0 FROM batch_lines l JOIN batches b ON b.id = l.batch_id
         WHERE b.run_id = $1 AND l.outcome = 'rejected_live'",
    )
    .bind(run)
    .fetch_all(env.store.pool())
    .await?;
    let recorded = env.mock.recorded();
    for answer in &rejected {
        let carried = recorded.iter().any(|messages| {
            messages.windows(2).any(|w| {
                w[0].role == "assistant" && w[0].content == *answer && w[1].content.contains("was not accepted")
            })
        });
        assert!(carried, "no live request carried the rejected answer {answer:?}");
    }
    env.cleanup().await
}

/// A task marked for a live re-ask, against the other events of its life: the outbox offers it
/// although its run is routed to batches, no batch claims it, the live worker finds the
/// conversation to carry on (not once its inputs changed), and after it fails `run retry-failed`
/// puts it back on its run's route, afresh.
#[tokio::test]
async fn a_live_reask_is_published_not_batched_and_retry_failed_starts_it_afresh() -> anyhow::Result<()> {
    use reasonrec_store::batches::REJECTED_LIVE;
    use reasonrec_store::finish::{Finish, FinishKind};
    let (env, run) = env_with(MockConfig { api_key: key(), ..MockConfig::default() }, Protocol::OpenAi).await?;
    let (owner, ep) = (Uuid::now_v7(), "openai-batch");
    let Some((batch, lines)) = env.store.batches().claim(owner, run, ep, Protocol::OpenAi, 3).await? else {
        anyhow::bail!("no ready task to claim");
    };
    let (first, other) = (&lines[0], &lines[1]);
    let conversation = vec![("an answer".to_string(), "Your answer was not accepted: why.".to_string())];
    env.store
        .batches()
        .settle_lines(
            owner,
            batch,
            &[(first.line, REJECTED_LIVE, Some(conversation.clone()))],
            &[first.task_id, other.task_id],
            &[first.task_id],
        )
        .await?;
    let offered: Vec<Uuid> =
        env.store.runs().ready_tasks(run, Uuid::nil(), 1_000).await?.into_iter().map(|t| t.0).collect();
    assert_eq!(offered, vec![first.task_id], "the outbox offers the live re-ask only, not the task sent back");
    let carried = env.store.batches().live_reask_conversation(first.task_id, first.inputs_version).await?;
    assert_eq!(carried.as_ref().map(|c| (c.reasks, &c.conversation)), Some((1, &conversation)));
    assert_eq!(
        env.store.batches().live_reask_conversation(first.task_id, first.inputs_version + 1).await?,
        None,
        "inputs changed"
    );
    let Some((_, next)) = env.store.batches().claim(owner, run, ep, Protocol::OpenAi, 1_000).await? else {
        anyhow::bail!("the task sent back is claimable");
    };
    assert!(next.iter().all(|l| l.task_id != first.task_id), "no batch claims a live re-ask");
    assert!(next.iter().any(|l| l.task_id == other.task_id));

    // The live re-ask fails; retry-failed puts it back on the batch route with no conversation.
    let fail = FinishKind::Fail { error: "answer rejected".into() };
    let finish = Finish {
        task_id: first.task_id,
        run_id: run,
        inputs_version: first.inputs_version,
        kind: fail,
        attempts: vec![],
    };
    env.store.finishing().finish_tasks(&[finish]).await?;
    assert_eq!(env.store.runs().retry_failed(run).await?, 1);
    assert!(env.store.runs().ready_tasks(run, Uuid::nil(), 1_000).await?.is_empty(), "back on the batch route");
    let Some((_, again)) = env.store.batches().claim(owner, run, ep, Protocol::OpenAi, 1_000).await? else {
        anyhow::bail!("the retried task is claimable");
    };
    let line = again.iter().find(|l| l.task_id == first.task_id);
    assert_eq!(line.map(|l| (l.reasks, l.conversation.len())), Some((0, 0)), "afresh: {again:?}");
    env.cleanup().await
}

/// A task marked for a live re-ask meets the live path's other events: its message confirmed
/// and then found gone (`requeue_departed`: offered again, still live), two copies of its
/// message at a live worker (asked once, done once), a spill (the run's other tasks go live),
/// and `run cancel` (nothing offered, the done task stays done).
#[tokio::test]
async fn a_live_reask_meets_republish_duplicates_spill_and_cancel() -> anyhow::Result<()> {
    use reasonrec_store::batches::REJECTED_LIVE;
    let (mut env, run) = env_with(MockConfig { api_key: key(), ..MockConfig::default() }, Protocol::OpenAi).await?;
    let (owner, ep) = (Uuid::now_v7(), "openai-batch");
    let Some((batch, lines)) = env.store.batches().claim(owner, run, ep, Protocol::OpenAi, 3).await? else {
        anyhow::bail!("no ready task to claim");
    };
    let (first, other) = (&lines[0], &lines[1]);
    let back = [first.task_id, other.task_id];
    env.store
        .batches()
        .settle_lines(owner, batch, &[(first.line, REJECTED_LIVE, Some(Vec::new()))], &back, &[first.task_id])
        .await?;
    let offered = |after: Uuid| {
        let s = env.store.clone();
        async move {
            anyhow::Ok(s.runs().ready_tasks(run, after, 10_000).await?.into_iter().map(|t| t.0).collect::<Vec<_>>())
        }
    };
    // Published, then its message found gone: offered again, still as a live re-ask.
    env.store.runs().mark_published(&[first.task_id]).await?;
    assert!(offered(Uuid::nil()).await?.is_empty(), "published: not offered twice");
    env.store.runs().requeue_departed(chrono::Utc::now() + chrono::TimeDelta::seconds(1)).await?;
    assert_eq!(offered(Uuid::nil()).await?, vec![first.task_id]);
    // Two copies of its message, worked by a live worker: done once, the second is a no-op.
    env.settings.teacher.endpoints.push(EndpointSettings {
        name: "live".into(),
        mode: EndpointMode::Live,
        ..batch_endpoint(&env.mock, Protocol::OpenAi)
    });
    let processor = env.processor()?;
    let stage = env.store.tasks().load(first.task_id).await?.stage;
    let msg = reasonrec_core::TaskMessage::new(first.task_id, run, stage);
    use reasonrec_worker::process::Outcome;
    assert_eq!(processor.process(&msg).await?, Outcome::Completed { reused: false });
    assert_eq!(processor.process(&msg).await?, Outcome::AlreadyDone, "the duplicate copy");
    let live_calls = scalar(&env, "SELECT count(*) FROM attempts WHERE run_id = $1 AND endpoint = 'live'", run).await?;
    assert_eq!(live_calls, 1, "asked once");
    // Spilled: the run's other ready tasks go to the live route.
    assert!(env.store.batches().spill_run(run).await?);
    let after_spill = offered(Uuid::nil()).await?;
    assert!(after_spill.contains(&other.task_id) && !after_spill.contains(&first.task_id), "{after_spill:?}");
    // Cancelled: nothing is offered; the re-asked task stays done.
    env.store.runs().cancel(run).await?;
    assert!(offered(Uuid::nil()).await?.is_empty());
    let state: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
        .bind(first.task_id)
        .fetch_one(env.store.pool())
        .await?;
    assert_eq!(state, "done");
    env.cleanup().await
}

/// The submitter killed at random points (its tick dropped mid-flight, as a SIGKILL stops a
/// process between any two awaits: after claiming, during a create, while finishing results)
/// and started again, over and over, with lost create answers and line faults on: the run
/// completes, and every batch the provider created is one of our rows: none was sent twice.
#[tokio::test]
async fn a_submitter_killed_anywhere_never_submits_a_batch_twice() -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    for (protocol, seed) in [(Protocol::OpenAi, 21u64), (Protocol::Anthropic, 22)] {
        let cfg = MockConfig {
            api_key: key(),
            batch_line_error_rate: 0.05,
            batch_expire_rate: 0.05,
            batch_lose_create_response: 2,
            batch_turnaround_ms: 30,
            seed,
            ..MockConfig::default()
        };
        let (mut env, run) = env_with(cfg, protocol).await?;
        env.settings.teacher.endpoints[0].timeout_secs = 1;
        env.settings.batch.max_open = 3;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
        let mut kills = 0;
        loop {
            // A process of its own: its pool dies with it, and Postgres ends its transactions.
            let store = reasonrec_store::Store::connect(&env.settings.database).await?;
            let subs = env.batch_submitters_on(&store)?;
            let s = subs[0].clone();
            let life = tokio::spawn(async move {
                loop {
                    match s.tick().await {
                        // The killed submitter's last statement may still run on the server after
                        // this one took its rows over: it takes them back, and this one's next
                        // move is refused. `BatchSubmitter::run` logs that and ticks again; so
                        // does this loop.
                        Err(WorkerError::Store(StoreError::Taken(..))) => {}
                        r => {
                            r?;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                #[allow(unreachable_code)]
                Ok::<_, anyhow::Error>(())
            });
            tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(30..500))).await;
            life.abort();
            let ended = life.await;
            drop(subs);
            store.close().await;
            if let Ok(Err(e)) = ended {
                return Err(e);
            }
            kills += 1;
            if env.store.runs().refresh_state(run).await? == reasonrec_core::stage::RunState::Completed {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "{protocol}: not completed after {kills} kills");
        }
        check_complete(&env, run).await?;
        let stats = env.mock.stats();
        let ours =
            scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND provider_id IS NOT NULL", run).await?;
        assert_eq!(stats.batches_created as i64, ours, "{protocol}, {kills} kills: {stats:?}");
        assert!(kills > 3, "{kills}");
        env.cleanup().await?;
    }
    Ok(())
}

/// A batch's results read a second time (the submitter died after finishing its tasks and
/// before settling the lines): nothing changes and nothing is recorded twice, also for the
/// lines whose tasks went back and sit in a later batch by then.
#[tokio::test]
async fn results_read_again_after_a_crash_change_nothing() -> anyhow::Result<()> {
    let cfg = MockConfig {
        api_key: key(),
        rate_contradict: 0.1,
        batch_line_error_rate: 0.1,
        seed: 3,
        ..MockConfig::default()
    };
    let (mut env, run) = env_with(cfg.clone(), Protocol::OpenAi).await?;
    env.settings.batch.max_open = 1;
    let subs = env.batch_submitters()?;
    assert_eq!(subs[0].tick().await?.created, 1);
    // The next batch stays at the provider while the first is read again.
    env.mock.set_config(MockConfig { batch_turnaround_ms: 600_000, ..cfg }).map_err(anyhow::Error::msg)?;
    let r = subs[0].tick().await?;
    assert_eq!((r.ended, r.created), (1, 1), "{r:?}");
    assert!(r.sent_back + r.reasked > 0, "some tasks went back into the second batch: {r:?}");
    let first: Uuid = sqlx::query_scalar("SELECT id FROM batches WHERE run_id = $1 ORDER BY created_at LIMIT 1")
        .bind(run)
        .fetch_one(env.store.pool())
        .await?;
    let snapshot = |env: &TestEnv| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_as::<_, (i64, i64, i64, i64, f64)>(
                "SELECT (SELECT count(*) FROM attempts WHERE run_id = $1),
                        (SELECT count(*) FROM outputs WHERE run_id = $1),
                        (SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'),
                        (SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'batched'),
                        (SELECT COALESCE(sum(cost_usd), 0)::float8 FROM attempts WHERE run_id = $1)",
            )
            .bind(run)
            .fetch_one(&pool)
            .await
        }
    };
    let before = snapshot(&env).await?;
    sqlx::query("UPDATE batches SET state = 'submitted', ended_at = NULL WHERE id = $1")
        .bind(first)
        .execute(env.store.pool())
        .await?;
    sqlx::query("UPDATE batch_lines SET outcome = NULL WHERE batch_id = $1")
        .bind(first)
        .execute(env.store.pool())
        .await?;
    let r = subs[0].tick().await?;
    assert_eq!((r.ended, r.done), (1, 0), "read again, nothing newly done: {r:?}");
    assert_eq!(snapshot(&env).await?, before, "attempts, outputs, done and batched tasks, spend");
    env.cleanup().await
}

/// The `batched` state under a run's other events: `run retry-failed` while tasks sit in a
/// batch at the provider moves only the failed ones (they go into a later batch) and leaves the
/// batched ones where they are; a snapshot is refused while the run is not completed; and the
/// results of a batch read again after the run completed and was snapshotted change nothing of
/// its corpus (a late copy never changes a closed run).
#[tokio::test]
async fn retry_failed_and_snapshot_meet_batched_tasks() -> anyhow::Result<()> {
    use reasonrec_store::lifecycle::SnapshotOutcome;
    let cfg = MockConfig { api_key: key(), batch_line_error_rate: 0.3, seed: 5, ..MockConfig::default() };
    let (mut env, run) = env_with(cfg.clone(), Protocol::OpenAi).await?;
    env.settings.batch.max_open = 1;
    // One errored line fails its task.
    env.settings.teacher.max_attempts = 1;
    let subs = env.batch_submitters()?;
    assert_eq!(subs[0].tick().await?.created, 1);
    // The second batch stays at the provider for a while, without errors.
    env.mock
        .set_config(MockConfig { batch_turnaround_ms: 1_500, batch_line_error_rate: 0.0, ..cfg })
        .map_err(anyhow::Error::msg)?;
    let r = subs[0].tick().await?;
    assert_eq!((r.ended, r.created), (1, 1), "{r:?}");
    assert!(r.task_failures > 0, "some lines errored and failed their tasks: {r:?}");
    let count_in = |state: &'static str| {
        let (store, sql) = (env.store.clone(), "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = $2");
        async move { sqlx::query_scalar::<_, i64>(sql).bind(run).bind(state).fetch_one(store.pool()).await }
    };
    let (failed, batched) = (count_in("failed").await?, count_in("batched").await?);
    assert!(failed > 0 && batched > 0, "failed {failed}, batched {batched}");
    assert_eq!(env.store.runs().retry_failed(run).await?, u64::try_from(failed)?);
    assert_eq!((count_in("failed").await?, count_in("batched").await?), (0, batched), "batched tasks stay put");
    let refused = env.store.lifecycle().create_snapshot("while-batched", run, None).await?;
    assert!(matches!(refused, SnapshotOutcome::RunNotCompleted { .. }), "{refused:?}");

    env.tick_until_completed(&subs, run, 60).await?;
    check_complete(&env, run).await?;
    assert_eq!(count_in("failed").await?, 0, "the retried tasks were done by a later batch");
    assert!(matches!(env.store.lifecycle().create_snapshot("frozen", run, None).await?, SnapshotOutcome::Created));

    // The first batch's results once more, after the snapshot: its failed lines' tasks were
    // retried and done since; nothing of the frozen corpus moves and nothing is recorded twice.
    let corpus = |env: &TestEnv| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_as::<_, (i64, i64, i64, f64, Option<String>)>(
                "SELECT (SELECT count(*) FROM attempts WHERE run_id = $1),
                        (SELECT count(*) FROM outputs WHERE run_id = $1),
                        (SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'),
                        (SELECT COALESCE(sum(cost_usd), 0)::float8 FROM attempts WHERE run_id = $1),
                        (SELECT string_agg(encode(output_key, 'hex'), ',' ORDER BY id) FROM tasks WHERE run_id = $1)",
            )
            .bind(run)
            .fetch_one(&pool)
            .await
        }
    };
    let before = corpus(&env).await?;
    sqlx::query(
        "UPDATE batches SET state = 'submitted', ended_at = NULL
         WHERE id = (SELECT id FROM batches WHERE run_id = $1 ORDER BY created_at LIMIT 1)",
    )
    .bind(run)
    .execute(env.store.pool())
    .await?;
    sqlx::query(
        "UPDATE batch_lines SET outcome = NULL
         WHERE batch_id = (SELECT id FROM batches WHERE run_id = $1 ORDER BY created_at LIMIT 1)",
    )
    .bind(run)
    .execute(env.store.pool())
    .await?;
    let r = subs[0].tick().await?;
    assert_eq!((r.ended, r.done, r.task_failures), (1, 0, 0), "{r:?}");
    assert_eq!(corpus(&env).await?, before, "attempts, outputs, done tasks, spend, keys");
    assert_eq!(env.store.runs().refresh_state(run).await?, reasonrec_core::stage::RunState::Completed);
    env.cleanup().await
}

/// OpenAI fails a batch that would take the model past its enqueued-token quota ("try again once
/// some in_progress batches have been completed"): the submitter then sends nothing new until
/// one of its batches ends, instead of a failed batch at every poll.
#[tokio::test]
async fn a_batch_refused_for_the_enqueued_token_quota_holds_new_ones_until_one_ends() -> anyhow::Result<()> {
    let cfg = MockConfig { api_key: key(), batch_turnaround_ms: 1_500, ..MockConfig::default() };
    let (mut env, run) = env_with(cfg.clone(), Protocol::OpenAi).await?;
    env.settings.batch.max_open = 1;
    env.settings.batch.poll_ms = 60_000;
    assert_eq!(env.batch_submitters()?[0].tick().await?.created, 1, "the first batch, under no quota");
    // Now the quota is full while that batch runs: the next one fails at the provider.
    env.mock.set_config(MockConfig { batch_enqueued_token_limit: 1, ..cfg.clone() }).map_err(anyhow::Error::msg)?;
    env.settings.batch.max_open = 2;
    let subs = env.batch_submitters()?;
    assert_eq!(subs[0].tick().await?.created, 1, "a second batch goes");
    let r = subs[0].tick().await?;
    assert_eq!((r.failed, r.created), (1, 0), "it failed for the quota, and nothing new went: {r:?}");
    for _ in 0..5 {
        let r = subs[0].tick().await?;
        assert_eq!(r.created, 0, "held while the first batch runs: {r:?}");
    }
    assert_eq!(env.mock.stats().batches_created, 2);
    // The quota frees up as the first batch ends; the run goes on.
    env.mock.set_config(cfg).map_err(anyhow::Error::msg)?;
    env.tick_until_completed(&subs, run, 60).await?;
    check_complete(&env, run).await?;
    let failed = scalar(&env, "SELECT count(*) FROM batches WHERE run_id = $1 AND state = 'failed'", run).await?;
    assert_eq!(failed, 1, "one refused batch, not one per poll");
    env.cleanup().await
}
