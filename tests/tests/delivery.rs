//! At-least-once delivery, exactly-once effect: redeliveries and duplicates never make a second
//! rationale, and the outbox marks nothing published without the broker's confirm.

use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use reasonrec_coordinator::{Outbox, create_run};
use reasonrec_core::TaskMessage;
use reasonrec_core::stage::TaskState;
use reasonrec_tests::{TestEnv, count};
use reasonrec_worker::Outcome;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_committed_but_not_acked_is_redelivered_and_absorbed() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let plan = env.plan_sample_run(10).await?;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(plan.run_id).await?.published, 10);

    // A "worker" takes one message, commits its task, and dies before acking.
    let ch = broker.channel().await?;
    let got = ch
        .basic_get(broker.topology().work_queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await?
        .ok_or_else(|| anyhow::anyhow!("queue is empty"))?;
    let msg = TaskMessage::decode(&got.delivery.data)?;
    let outcome = env.processor()?.process(&msg).await?;
    assert_eq!(outcome, Outcome::Completed { reused: false });
    ch.close(200, "dying without ack".into()).await?;

    // The real worker gets the message again and must not store or pay for it twice.
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    let counters = w.shutdown().await?;
    assert_eq!(counters.already_done.load(Ordering::Relaxed), 1, "the redelivery was recognised");
    assert_eq!(counters.completed.load(Ordering::Relaxed), 9);
    assert_eq!(env.mock.stats().ok, 10, "no second teacher call for the redelivered task");
    env.expect_each_done_once(plan.run_id, 10).await?;
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_published_twice_still_yields_one_rationale_per_task() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let plan = env.plan_sample_run(40).await?;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(plan.run_id).await?.published, 40);
    // A coordinator that crashed after publishing but before marking publishes everything again.
    sqlx::query("UPDATE tasks SET state = 'ready', published_at = NULL WHERE run_id = $1")
        .bind(plan.run_id)
        .execute(env.store.pool())
        .await?;
    assert_eq!(outbox.pump(plan.run_id).await?.published, 40);

    let w1 = env.spawn_worker("w1")?;
    let w2 = env.spawn_worker("w2")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    // Wait for the duplicates still queued (or prefetched) to be handled before stopping: by
    // the workers' own counts, not the queue's depth (under load a depth of 0 came while
    // prefetched copies were still unhandled, and they went back to the queue at shutdown).
    let (k1, k2) = (w1.counters.clone(), w2.counters.clone());
    let handled = move || {
        [&k1, &k2]
            .iter()
            .map(|c| {
                c.completed.load(Ordering::Relaxed)
                    + c.reused.load(Ordering::Relaxed)
                    + c.already_done.load(Ordering::Relaxed)
            })
            .sum::<u64>()
    };
    reasonrec_tests::wait_until("80 deliveries handled", Duration::from_secs(60), || {
        let n = handled();
        async move { Ok(n >= 80) }
    })
    .await?;
    let (c1, c2) = (w1.shutdown().await?, w2.shutdown().await?);
    let sum = |f: fn(&reasonrec_worker::WorkerCounters) -> &std::sync::atomic::AtomicU64| {
        f(&c1).load(Ordering::Relaxed) + f(&c2).load(Ordering::Relaxed)
    };
    assert_eq!(sum(|c| &c.completed) + sum(|c| &c.reused) + sum(|c| &c.already_done), 80, "80 deliveries handled");
    assert_eq!(sum(|c| &c.completed), 40 - sum(|c| &c.reused));
    assert_eq!(env.outputs_made(plan.run_id).await?, 40, "one rationale per task");
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Done).await?, 40);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_marked_published_only_after_the_broker_confirms() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    // The queue holds at most 5 messages; the broker nacks publishes beyond that. (A classic
    // queue enforces the bound exactly; RabbitMQ 3.10's quorum queues overshoot it.)
    env.settings.broker.max_length = 5;
    env.settings.broker.queue_type = reasonrec_core::settings::QueueType::Classic;
    let plan = env.plan_sample_run(30).await?;
    let (broker, outbox) = env.outbox().await?;
    let report = outbox.pump(plan.run_id).await?;
    assert_eq!((report.published, report.nacked, report.returned), (5, 25, 0));
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Published).await?, 5);
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Ready).await?, 25);

    // Nacked tasks stay ready and go out on later passes as the queue drains.
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    env.expect_each_done_once(plan.run_id, 30).await?;
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publishes_are_not_marked_published() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    let plan = env.plan_sample_run(12).await?;
    let broker = env.broker().await?;
    // The exchange exists but nothing is bound to it: the broker confirms and returns each message.
    let ch = broker.channel().await?;
    ch.queue_delete(broker.topology().work_queue.as_str().into(), QueueDeleteOptions::default()).await?;
    let outbox = Outbox::new(env.store.clone(), &broker).await?;
    let report = outbox.pump(plan.run_id).await?;
    assert_eq!((report.published, report.nacked, report.returned), (0, 0, 12));
    let s = &env.store;
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'ready' AND published_at IS NULL",
            plan.run_id
        )
        .await?,
        12
    );
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_messages_are_published_again_and_failed_tasks_can_be_retried() -> anyhow::Result<()> {
    let mut env =
        TestEnv::with_mock(reasonrec_mock_teacher::MockConfig { rate_5xx: 1.0, ..Default::default() }).await?;
    env.settings.teacher.max_attempts = 2;
    env.settings.teacher.breaker_failures = 1_000;
    let plan = env.plan_sample_run(20).await?;
    let broker = env.broker().await?;
    let outbox = Outbox::new(env.store.clone(), &broker).await?.with_republish_after(Duration::from_secs(1));
    assert_eq!(outbox.pump(plan.run_id).await?.published, 20);
    // The queue loses every message (a purge, a broker that lost its disk).
    let ch = broker.channel().await?;
    ch.queue_purge(broker.topology().work_queue.as_str().into(), lapin::options::QueuePurgeOptions::default()).await?;
    let w = env.spawn_worker("w")?;
    // the outbox published the lost tasks again
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    let s = &env.store;
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Failed).await?, 20);

    // The teacher recovers; the failed tasks are put back and done, their history kept.
    env.mock.set_config(reasonrec_mock_teacher::MockConfig::default()).map_err(anyhow::Error::msg)?;
    assert_eq!(s.runs().retry_failed(plan.run_id).await?, 20);
    assert_eq!(s.runs().get(plan.run_id).await?.state, "running");
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Done).await?, 20);
    assert_eq!(env.outputs_made(plan.run_id).await?, 20);
    assert_eq!(
        count(s, "SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class = 'server'", plan.run_id).await?,
        40
    );
    assert_eq!(count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND attempts = 3", plan.run_id).await?, 20);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_parked_with_its_reason_and_work_goes_on() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 5;
    env.ingest_sample().await?;
    let broker = env.broker().await?;
    let ch = broker.channel().await?;
    let garbage = b"{\"v\": 1, \"task\": \"not what a worker reads\"}".to_vec();
    ch.basic_publish(
        broker.topology().exchange.as_str().into(),
        reasonrec_queue::topology::TASK_ROUTING_KEY.into(),
        lapin::options::BasicPublishOptions::default(),
        &garbage,
        lapin::BasicProperties::default(),
    )
    .await?;
    let plan = create_run(&env.store, &env.settings, "sample").await?;
    let outbox = Outbox::new(env.store.clone(), &broker).await?;
    let w = env.spawn_worker("w")?;
    // the bad message did not stop the worker
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    let counters = w.shutdown().await?;
    assert_eq!(counters.bad_messages.load(Ordering::Relaxed), 1);
    let parked = ch
        .basic_get(broker.topology().parked_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .ok_or_else(|| anyhow::anyhow!("the parked queue is empty"))?;
    assert_eq!(parked.delivery.data, garbage);
    let reason =
        reasonrec_queue::redirect::header_str(&parked.delivery.properties, "x-reasonrec-error").unwrap_or_default();
    assert!(reason.contains("cannot decode task message"), "{reason}");
    assert_eq!(broker.topology().ready_messages(&ch).await?, 0);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_broker_connection_is_cut_reconnects_and_nothing_is_doubled() -> anyhow::Result<()> {
    let mut env =
        TestEnv::with_mock(reasonrec_mock_teacher::MockConfig { latency_ms: 40, ..Default::default() }).await?;
    let plan = env.plan_sample_run(150).await?;
    let broker = env.broker().await?; // the outbox talks to the broker directly
    let outbox = Outbox::new(env.store.clone(), &broker).await?;
    outbox.pump(plan.run_id).await?;

    // The worker reaches RabbitMQ only through a proxy this test owns.
    let proxy = reasonrec_tests::proxy::TcpProxy::start("127.0.0.1:5672".parse()?).await?;
    let direct = env.settings.broker.url.clone();
    env.settings.broker.url = direct.replace("127.0.0.1:5672", &proxy.addr.to_string());
    anyhow::ensure!(env.settings.broker.url != direct, "broker URL not routed through the proxy");
    let w = env.spawn_worker("w")?;
    let done_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'";
    for cut in 1..=3 {
        let t0 = std::time::Instant::now();
        while count(&env.store, done_sql, plan.run_id).await? < 30 * cut {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "no progress before cut {cut}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(proxy.cut_all() > 0, "a connection was open to cut");
    }
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 90).await?;
    let counters = w.shutdown().await?;
    assert!(counters.reconnects.load(Ordering::Relaxed) >= 3, "reconnected after each cut");
    let s = &env.store;
    assert_eq!(count(s, done_sql, plan.run_id).await?, 150);
    assert_eq!(env.outputs_made(plan.run_id).await?, 150, "one rationale per task");
    let calls = env.mock.stats().ok;
    assert!((150..=150 + 3 * 16).contains(&calls), "at most the in-flight tasks of each cut are asked again: {calls}");
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_costing_its_queued_messages_are_acked_and_skipped() -> anyhow::Result<()> {
    let mut env =
        TestEnv::with_mock(reasonrec_mock_teacher::MockConfig { latency_ms: 100, ..Default::default() }).await?;
    env.settings.worker.concurrency = 4;
    let plan = env.plan_sample_run(100).await?;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(plan.run_id).await?.published, 100);
    let w = env.spawn_worker("w")?;
    let s = &env.store;
    let done_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'";
    while count(s, done_sql, plan.run_id).await? < 8 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = s.runs().cancel(plan.run_id).await?;
    assert!(cancelled > 50, "{cancelled}");
    // The queue drains: every remaining message is acked without a teacher call. Wait for the
    // worker to have handled all 100 (an empty queue alone still leaves up to `concurrency`
    // prefetched messages in the worker, which a shutdown would hand back).
    let ch = broker.channel().await?;
    let handled = |c: &reasonrec_worker::WorkerCounters| {
        [&c.completed, &c.already_done, &c.failed, &c.skipped].iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>()
    };
    for _ in 0..400 {
        if handled(&w.counters) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let counters = w.shutdown().await?;
    assert_eq!(broker.topology().ready_messages(&ch).await?, 0);
    let done = count(s, done_sql, plan.run_id).await?;
    assert!(counters.skipped.load(Ordering::Relaxed) > 50);
    assert_eq!(done + env.tasks_in(plan.run_id, TaskState::Cancelled).await?, 100);
    assert!(env.mock.stats().ok <= done as u64 + 4, "at most the tasks in flight at the cancel were still asked");
    assert_eq!(s.runs().get(plan.run_id).await?.state, "cancelled");
    assert!(s.runs().cancel(uuid::Uuid::now_v7()).await.is_err(), "an unknown run is an error");
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_database_connections_are_cut_commits_nothing_twice_and_finishes() -> anyhow::Result<()> {
    let mut env =
        TestEnv::with_mock(reasonrec_mock_teacher::MockConfig { latency_ms: 30, ..Default::default() }).await?;
    let plan = env.plan_sample_run(150).await?;
    let (broker, outbox) = env.outbox().await?;
    outbox.pump(plan.run_id).await?;

    // The worker's database pool goes through a proxy this test owns; the test's own pool does not.
    let proxy = reasonrec_tests::proxy::TcpProxy::start("127.0.0.1:5432".parse()?).await?;
    let mut db = env.settings.database.clone();
    db.url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    anyhow::ensure!(db.url != env.settings.database.url, "database URL not routed through the proxy");
    let worker_store = reasonrec_store::Store::connect(&db).await?;
    let w = env.spawn_worker_on("w", worker_store.clone())?;
    let done_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'";
    for cut in 1..=3 {
        let t0 = std::time::Instant::now();
        while count(&env.store, done_sql, plan.run_id).await? < 30 * cut {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "no progress before cut {cut}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(proxy.cut_all() > 0, "connections were open to cut");
    }
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 90).await?;
    w.shutdown().await?;
    worker_store.close().await;
    let s = &env.store;
    assert_eq!(count(s, done_sql, plan.run_id).await?, 150);
    assert_eq!(env.outputs_made(plan.run_id).await?, 150, "one rationale per task");
    assert_eq!(
        count(s, "SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class IS NULL", plan.run_id).await?,
        count(
            s,
            "SELECT count(*) FROM (SELECT DISTINCT task_id FROM attempts WHERE run_id = $1 AND error_class IS NULL) x",
            plan.run_id
        )
        .await?,
        "no task has two committed successful attempts"
    );
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_too_often_is_dead_lettered_and_its_task_fails_with_the_reason() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.broker.delivery_limit = 2;
    let plan = env.plan_sample_run(3).await?;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(plan.run_id).await?.published, 3);

    // A consumer that "crashes" on every delivery: takes it and hands it back, until the
    // broker dead-letters all three.
    let ch = broker.channel().await?;
    let topo = broker.topology().clone();
    let t0 = std::time::Instant::now();
    while topo.queue_depth(&ch, &topo.dead_queue).await? < 3 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "messages were not dead-lettered");
        match ch.basic_get(topo.work_queue.as_str().into(), BasicGetOptions { no_ack: false }).await? {
            Some(m) => {
                m.delivery.acker.nack(lapin::options::BasicNackOptions { requeue: true, multiple: false }).await?;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(topo.ready_messages(&ch).await?, 0);
    assert_eq!(outbox.record_dead_letters().await?, 3);
    let failed = count(
        &env.store,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed'
           AND last_error LIKE 'dead-lettered: delivery limit reached%'",
        plan.run_id,
    )
    .await?;
    assert_eq!(failed, 3, "each task failed with the dead-letter reason");
    assert_eq!(topo.queue_depth(&ch, &topo.dead_queue).await?, 0, "recorded messages are acked");

    // retry-failed puts them back and a worker finishes them.
    assert_eq!(env.store.runs().retry_failed(plan.run_id).await?, 3);
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    w.shutdown().await?;
    assert_eq!(env.outputs_made(plan.run_id).await?, 3);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_down_tasks_wait_in_retry_tiers_then_are_dead_lettered_then_retried() -> anyhow::Result<()> {
    let pg = reasonrec_tests::pg::PrivatePostgres::start()?;
    let mut env = TestEnv::on_server(reasonrec_mock_teacher::MockConfig::default(), pg.admin_url()).await?;
    env.settings.broker.retry_delays_secs = vec![1, 2];
    env.settings.broker.max_retries = 3;
    env.settings.database.acquire_timeout_secs = 1;
    let plan = env.plan_sample_run(20).await?;
    let (broker, outbox) = env.outbox().await?;
    assert_eq!(outbox.pump(plan.run_id).await?.published, 20);

    let worker_store = reasonrec_store::Store::connect(&env.settings.database).await?;
    pg.stop()?;
    let w = env.spawn_worker_on("w", worker_store)?;
    let ch = broker.channel().await?;
    let topo = broker.topology().clone();
    let t0 = std::time::Instant::now();
    // 1 + 3 tries per task, 1 s + 2 s + 2 s in the tiers between them.
    while topo.queue_depth(&ch, &topo.dead_queue).await? < 20 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "tasks did not reach the dead queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(t0.elapsed() >= Duration::from_secs(5), "the tiers delayed the retries");
    let handed_back = w.counters.requeued.load(Ordering::Relaxed);
    assert_eq!(handed_back, 80, "each of 20 tasks tried 4 times, never committed");
    assert_eq!(env.mock.stats().requests, 0, "nothing was asked while tasks could not be loaded");

    // Postgres is back: the coordinator records the dead letters with their reason.
    pg.start_again()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let target = reasonrec_coordinator::Target::Run(plan.run_id);
    let first = reasonrec_coordinator::supervise(&env.store, &env.settings, target, stop.clone());
    let state = tokio::time::timeout(Duration::from_secs(60), first).await??;
    assert_eq!(state, Some(reasonrec_core::stage::RunState::Completed));
    let failed = count(
        &env.store,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed'
           AND last_error LIKE 'dead-lettered: retries spent (3): %'",
        plan.run_id,
    )
    .await?;
    assert_eq!(failed, 20);

    // retry-failed: the same worker (its pool reconnected) finishes them.
    assert_eq!(env.store.runs().retry_failed(plan.run_id).await?, 20);
    let target = reasonrec_coordinator::Target::Run(plan.run_id);
    let again = reasonrec_coordinator::supervise(&env.store, &env.settings, target, stop);
    let state = tokio::time::timeout(Duration::from_secs(60), again).await??;
    assert_eq!(state, Some(reasonrec_core::stage::RunState::Completed));
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Done).await?, 20);
    w.shutdown().await?;
    assert_eq!(env.outputs_made(plan.run_id).await?, 20);
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_outbox_pages_publish_each_ready_task_once_within_the_cap() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    // Pages of 7: page N is published while N-1 is marked and N+1 read.
    env.settings.broker.publish_batch = 7;
    let plan = env.plan_sample_run(40).await?;
    let broker = env.broker().await?;
    let s = &env.store;
    let outbox = Outbox::new(env.store.clone(), &broker).await?.with_max_outstanding(30);
    assert_eq!(outbox.pump(plan.run_id).await?.published, 30, "the cap bounds one pass");
    assert_eq!(outbox.pump(plan.run_id).await?.published, 0, "no room left");
    let published = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'published' AND published_at IS NOT NULL";
    assert_eq!(count(s, published, plan.run_id).await?, 30, "every confirmed page was marked, the last one too");
    assert_eq!(env.tasks_in(plan.run_id, TaskState::Ready).await?, 10);

    // A task a worker finished (here: failed) before its mark stays so and records when it was
    // published.
    let done: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM tasks WHERE run_id = $1 AND state = 'ready' ORDER BY id LIMIT 1")
            .bind(plan.run_id)
            .fetch_one(s.pool())
            .await?;
    sqlx::query("UPDATE tasks SET state = 'failed', last_error = 'x' WHERE id = $1")
        .bind(done)
        .execute(s.pool())
        .await?;
    assert_eq!(s.runs().mark_published(&[done]).await?.0, 1);
    let (state, at): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT state, published_at FROM tasks WHERE id = $1").bind(done).fetch_one(s.pool()).await?;
    assert_eq!((state.as_str(), at.is_some()), ("failed", true));

    let wider = Outbox::new(env.store.clone(), &broker).await?.with_max_outstanding(100);
    assert_eq!(wider.pump(plan.run_id).await?.published, 9, "the rest, nothing twice");
    // Exactly one message per published task: 39 distinct task ids in the queue.
    let ch = broker.channel().await?;
    let mut ids = std::collections::HashSet::new();
    let mut messages = 0;
    while let Some(got) =
        ch.basic_get(broker.topology().work_queue.as_str().into(), BasicGetOptions { no_ack: true }).await?
    {
        ids.insert(TaskMessage::decode(&got.delivery.data)?.task_id);
        messages += 1;
    }
    assert_eq!((messages, ids.len()), (39, 39));
    assert_eq!(count(s, published, plan.run_id).await?, 39);
    broker.close().await;
    env.cleanup().await
}
