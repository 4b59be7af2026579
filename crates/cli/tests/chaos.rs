//! The chaos scenario, short: worker processes killed with SIGKILL every two seconds, every
//! broker connection cut twice, the private Postgres restarted once, with the issue's teacher
//! faults on. `scripts/chaos.sh` runs the same scenario with 50,000 tasks.

use reasonrec_core::settings::Protocol;
use reasonrec_tests::chaos::{BatchChaos, ChaosConfig, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_and_nothing_is_done_twice_under_chaos() -> anyhow::Result<()> {
    let cfg = ChaosConfig {
        reasonrec: env!("CARGO_BIN_EXE_reasonrec").into(),
        tasks: 1_200,
        workers: 3,
        concurrency: 32,
        kill_every: Duration::from_secs(2),
        broker_cuts: 2,
        restart_postgres: true,
        faults: ChaosConfig::issue_faults(),
        timeout: Duration::from_secs(240),
        seed: 11,
        batch: None,
        worker_logs: None,
    };
    let report = run(cfg).await?;
    eprintln!("{}", report.render());
    assert_eq!(report.unfinished, 0, "every task ends done or failed");
    assert_eq!(report.duplicates, 0, "no task has two rationales");
    assert_eq!(report.missing, 0, "every done task has its rationale");
    assert_eq!(report.rationales, report.done, "one rationale per done task");
    assert!(report.done >= report.tasks * 95 / 100, "most tasks done: {report:?}");
    assert!(report.kills >= 3 && report.broker_cuts == 2 && report.postgres_restarts == 1, "{report:?}");
    Ok(())
}

/// The batch path under the same chaos (issue 17): the run goes through the mock's OpenAI Batch
/// API, whose submitter lives in the worker processes that are killed, with lost create answers,
/// refused calls, errored, expired and re-asked lines and the enqueued-token limit on. Nothing is
/// lost, no rationale is stored twice, and no batch is sent to the provider twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_batch_is_sent_twice_under_chaos() -> anyhow::Result<()> {
    let tasks = 1_200;
    let faults =
        ChaosConfig::with_batch_faults(ChaosConfig::issue_faults(), Protocol::OpenAi, ChaosConfig::batch_lines(tasks));
    let cfg = ChaosConfig {
        reasonrec: env!("CARGO_BIN_EXE_reasonrec").into(),
        tasks,
        workers: 3,
        concurrency: 32,
        kill_every: Duration::from_secs(2),
        broker_cuts: 2,
        restart_postgres: true,
        faults,
        timeout: Duration::from_secs(240),
        seed: 12,
        batch: Some(BatchChaos { protocol: Protocol::OpenAi, spill_at: None }),
        worker_logs: None,
    };
    let report = run(cfg).await?;
    eprintln!("{}", report.render());
    let batch = report.batch.clone().unwrap_or_default();
    assert_eq!(report.unfinished, 0, "every task ends done or failed");
    assert_eq!((report.duplicates, report.missing), (0, 0), "one rationale per done task: {report:?}");
    assert_eq!(report.rationales, report.done);
    assert!(report.done >= report.tasks * 95 / 100, "most tasks done: {report:?}");
    assert_eq!(batch.duplicate_submissions, 0, "no batch sent twice: {batch:?}");
    assert_eq!(batch.provider_batches_without_row, 0, "every provider batch is one of our rows: {batch:?}");
    assert_eq!(batch.rows_open, 0, "{batch:?}");
    assert!(batch.rows >= 10 && batch.create_answers_lost > 0, "batches and lost answers met: {batch:?}");
    assert_eq!((batch.route.as_str(), batch.done_live), ("batch", 0), "nothing went live: {batch:?}");
    assert!(report.kills >= 3 && report.postgres_restarts == 1, "{report:?}");
    Ok(())
}
