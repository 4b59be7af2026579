//! Limits shared by worker processes through leases in Postgres, and a worker that stops rather
//! than fail tasks when no endpoint accepts its credentials.

use reasonrec_mock_teacher::MockConfig;
use reasonrec_teacher::TeacherPool;
use reasonrec_tests::{TestEnv, count};
use reasonrec_worker::lease::Leases;
use std::time::Duration;

#[tokio::test]
async fn leases_split_an_endpoint_between_live_workers() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (p1, p2) = (TeacherPool::new(&env.settings.teacher)?, TeacherPool::new(&env.settings.teacher)?);
    let interval = Duration::from_millis(200);
    let l1 = Leases::new(env.store.clone(), p1.clone(), "w1".into(), interval);
    let l2 = Leases::new(env.store.clone(), p2.clone(), "w2".into(), interval);
    let share = |p: &TeacherPool| p.clients()[0].limiter().share();
    l1.renew().await;
    assert_eq!(share(&p1), 1.0);
    l2.renew().await;
    l1.renew().await;
    assert_eq!((share(&p1), share(&p2)), (0.5, 0.5));
    // w2 stops gracefully: its lease goes, w1 takes the whole limit at its next renewal.
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    l2.run(stop).await;
    l1.renew().await;
    assert_eq!(share(&p1), 1.0);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_together_stay_at_the_endpoint_limit() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.teacher.endpoints[0].requests_per_minute = 600; // 10/s for the whole fleet
    env.settings.teacher.lease_interval_ms = 200;
    let plan = env.plan_sample_run(60).await?;
    let (broker, outbox) = env.outbox().await?;
    let (w1, w2) = (env.spawn_worker("w1")?, env.spawn_worker("w2")?);
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 60).await?;
    let (c1, c2) = (w1.shutdown().await?, w2.shutdown().await?);
    let done = |c: &reasonrec_worker::WorkerCounters| c.completed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(done(&c1) > 0 && done(&c2) > 0, "both workers worked");
    let s = env.mock.stats();
    assert_eq!(s.ok, 60);
    // Each worker alone would allow 10/s: together, unshared, they would do 20/s.
    let span = (s.last_ok_ms.unwrap_or(0) - s.first_ok_ms.unwrap_or(0)) as f64 / 1000.0;
    let rate = (s.ok - 1) as f64 / span;
    assert!(rate <= 10.0 * 1.1, "fleet rate {rate:.1}/s over 60 requests, limit 10/s");
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM endpoint_leases").fetch_one(env.store.pool()).await?;
    assert_eq!(leases, 0, "stopped workers released their leases");
    broker.close().await;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_credentials_are_refused_stops_without_failing_tasks() -> anyhow::Result<()> {
    let mut env =
        TestEnv::with_mock(MockConfig { api_key: Some("the-right-key".into()), ..MockConfig::default() }).await?;
    env.settings.teacher.endpoints[0].api_key_env = Some("PATH".into()); // set, and not the key
    let plan = env.plan_sample_run(20).await?;
    let (broker, outbox) = env.outbox().await?;
    outbox.pump(plan.run_id).await?;
    let w = env.spawn_worker("w")?;
    let ended = tokio::time::timeout(Duration::from_secs(30), w.join).await?;
    let err = match ended {
        Ok(Err(e)) => e,
        other => panic!("the worker should stop with an error, got {other:?}"),
    };
    assert!(err.is_fatal() && err.to_string().contains("disabled"), "{err}");
    let s = &env.store;
    assert_eq!(
        count(s, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state IN ('failed', 'done')", plan.run_id).await?,
        0
    );
    let ch = broker.channel().await?;
    let mut waiting = 0;
    for _ in 0..100 {
        waiting = broker.topology().ready_messages(&ch).await?;
        if waiting == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, 20, "every message is back in the queue for a worker with the right key");
    broker.close().await;
    env.cleanup().await
}
