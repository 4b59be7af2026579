//! The chaos scenario, short: worker processes killed with SIGKILL every two seconds, every
//! broker connection cut twice, the private Postgres restarted once, with the issue's teacher
//! faults on. `scripts/chaos.sh` runs the same scenario with 50,000 tasks.

use reasonrec_tests::chaos::{ChaosConfig, run};
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
