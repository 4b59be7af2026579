//! The soak scenario, short (`reasonrec_tests::soak`; `scripts/soak.sh` runs seven nights):
//! four nights at a rate limit that makes the queue wait several times `republish_after`, with
//! teacher faults, a worker killed each night, a plan that dies on night 3, a template edited
//! on night 4, `run retry-failed` after failures and retention on.

use reasonrec_tests::soak::{SoakConfig, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nights_lose_nothing_duplicate_nothing_and_publish_each_task_once() -> anyhow::Result<()> {
    let cfg = SoakConfig {
        nights: 4,
        users: 30,
        // 10 calls/s for 230 tasks on the first night: its queue waits ~23 s, 4-5x
        // `republish_after`, which is itself above the longest a task takes (429 waits, retries).
        requests_per_minute: 600,
        republish_after_secs: 5,
        concurrency: 8,
        faults: SoakConfig::faults(),
        night_timeout: Duration::from_secs(120),
        seed: 11,
    };
    let report = run(cfg).await?;
    println!("{}", report.render());
    assert_eq!(report.nights.len(), 4);
    assert!(report.ok(), "{}", report.render());
    assert!(report.prompts_checked > 0);
    assert!(report.worker_kills >= 1);
    // Night 1 works everything; later nights only what changed (night 4: every reasoning task,
    // its template changed).
    let first = &report.nights[0];
    assert_eq!(first.to_work as i64, first.rows_written);
    assert!(report.nights[1].to_work < first.to_work / 5, "{}", report.render());
    Ok(())
}
