//! Scheduled regeneration: cron jobs fired by the leading coordinator only, never doubling a
//! run that is still going.

use reasonrec_coordinator::schedule::{Fired, fire, parse_jobs};
use reasonrec_coordinator::{Lead, serve};
use reasonrec_core::settings::ScheduleJob;
use reasonrec_tests::TestEnv;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_schedulers_make_one_run_and_a_finished_run_lets_the_next_tick_through() -> anyhow::Result<()> {
    let mut env = TestEnv::new().await?;
    env.settings.sampling.max_users = 10;
    env.settings.schedule.jobs =
        vec![ScheduleJob { name: "every-second".into(), cron: "* * * * * *".into(), dataset: "sample".into() }];
    env.ingest_sample().await?;
    let jobs = parse_jobs(&env.settings)?;

    // Two coordinators, as `reasonrec coordinator` runs them: each schedules (and publishes)
    // only while it leads.
    let stop = CancellationToken::new();
    let lead = Lead { every: Duration::from_millis(100), ..Lead::default() };
    let mut replicas = Vec::new();
    let leading: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
    for flag in &leading {
        let (store, settings, stop, flag) = (env.store.clone(), env.settings.clone(), stop.clone(), flag.clone());
        let jobs = jobs.clone();
        replicas.push(tokio::spawn(async move { serve(&store, &settings, &jobs, lead, &flag, stop).await }));
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let leaders = leading.iter().filter(|f| f.load(Ordering::Relaxed)).count();
    assert_eq!(leaders, 1, "one replica leads, the other stands by");
    stop.cancel();
    for r in replicas {
        r.await??;
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(env.store.pool()).await?;
    assert_eq!(runs, 1, "three ticks, two schedulers: one run, the others skipped while it runs");

    // Finish that run; the next tick creates an incremental run that carries everything over.
    let run_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM runs").fetch_one(env.store.pool()).await?;
    let (broker, outbox) = env.outbox().await?;
    let w = env.spawn_worker("w")?;
    reasonrec_tests::drive_to_completion(&outbox, run_id, 60).await?;
    w.shutdown().await?;
    let asked = env.mock.stats().requests;
    match fire(&env.store, &env.settings, &jobs[0]).await? {
        Fired::Created { to_work, .. } => assert_eq!(to_work, 0, "nothing changed: nothing to redo"),
        other => panic!("expected a new run, got {other:?}"),
    }
    assert_eq!(env.mock.stats().requests, asked, "no teacher call for unchanged keys");
    broker.close().await;
    env.cleanup().await
}

#[test]
fn a_bad_cron_expression_names_its_key() {
    let mut settings = reasonrec_core::Settings::default();
    settings.schedule.jobs = vec![
        ScheduleJob { name: "ok".into(), cron: "0 2 * * *".into(), dataset: "d".into() },
        ScheduleJob { name: "bad".into(), cron: "61 * * * *".into(), dataset: "d".into() },
    ];
    match parse_jobs(&settings) {
        Err(e) => assert!(e.to_string().contains("schedule.jobs[1].cron"), "{e}"),
        Ok(_) => panic!("a minute of 61 is accepted"),
    }
}
