//! The `reasonrec` binary as operators run it: real processes, real services, kill -9.

use reasonrec_coordinator::create_run;
use reasonrec_mock_teacher::MockConfig;
use reasonrec_tests::{TestEnv, count};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_reasonrec");

/// Writes a config file pointing the binary at the test's private database, broker names and mock.
fn write_config(env: &TestEnv, concurrency: u16) -> anyhow::Result<PathBuf> {
    let s = &env.settings;
    let ep = &s.teacher.endpoints[0];
    let text = format!(
        "[database]\nurl = {:?}\n[broker]\nurl = {:?}\nprefix = {:?}\n[prompts]\ndir = {:?}\n\
         [worker]\nconcurrency = {concurrency}\nshutdown_grace_secs = 5\n\
         [teacher]\nbackoff_min_ms = 10\nbackoff_max_ms = 200\n\
         [[teacher.endpoints]]\nname = \"mock\"\nbase_url = {:?}\nmodel = \"mock-teacher\"\ntimeout_secs = 5\n",
        s.database.url,
        s.broker.url,
        s.broker.prefix,
        s.prompts.dir.display().to_string(),
        ep.base_url,
    );
    let path = std::env::temp_dir().join(format!("rr-cli-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn worker(config: &std::path::Path, name: &str) -> anyhow::Result<Child> {
    Ok(Command::new(BIN)
        .args(["--config", &config.display().to_string(), "worker", "--name", name])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut env = TestEnv::with_mock(MockConfig { latency_ms: 150, ..MockConfig::default() }).await?;
    env.settings.sampling.max_users = 120;
    env.ingest_sample().await?;
    let config = write_config(&env, 20)?;
    let plan = create_run(&env.store, &env.settings, "sample").await?;
    let (broker, outbox) = env.outbox().await?;
    outbox.pump(plan.run_id).await?;

    let mut first = worker(&config, "doomed")?;
    let done_sql = "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'done'";
    let t0 = Instant::now();
    while count(&env.store, done_sql, plan.run_id).await? < 30 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "first worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill()?; // SIGKILL: no drain, no acks for what was in flight
    first.wait()?;
    let done_at_kill = count(&env.store, done_sql, plan.run_id).await?;
    assert!(done_at_kill < 120, "killed before the end ({done_at_kill} done)");

    let second = worker(&config, "survivor")?;
    reasonrec_tests::drive_to_completion(&outbox, plan.run_id, 90).await?;
    // SIGTERM drains and exits 0.
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status()?;
    let out = second.wait_with_output()?;
    assert!(out.status.success(), "graceful stop exits 0, got {}", out.status);
    // A WARN or ERROR line must mean something is wrong: a run that went well and a clean stop
    // print none (lapin once logged "Connection error ... Closing" on every clean shutdown).
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");

    // `run status --watch` on the finished run draws its bars once and exits 0.
    let watch = Command::new(BIN)
        .args(["--config", &config.display().to_string(), "run", "status", &plan.run_id.to_string(), "--watch"])
        .output()?;
    assert!(watch.status.success(), "{}", String::from_utf8_lossy(&watch.stderr));
    let drawn = String::from_utf8_lossy(&watch.stdout);
    assert!(drawn.contains(&format!("reasoning     {} 100%  120 done, 0 failed of 120", "█".repeat(40))), "{drawn}");

    let s = &env.store;
    assert_eq!(count(s, done_sql, plan.run_id).await?, 120);
    assert_eq!(env.outputs_made(plan.run_id).await?, 120, "exactly one rationale per task");
    let calls = env.mock.stats().ok;
    // Calls in flight at the kill (at most the prefetch, 20) may be made again; nothing else is.
    assert!((120..=140).contains(&calls), "teacher calls {calls}");
    let _ = std::fs::remove_file(&config);
    broker.close().await;
    env.cleanup().await
}

#[test]
fn configuration_errors_name_the_key() -> anyhow::Result<()> {
    let out = Command::new(BIN).args(["run", "status"]).env("REASONREC__WORKER__CONCURENCY", "4").output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("concurency"), "{err}");

    let out = Command::new(BIN).args(["run", "status"]).env("REASONREC__BROKER__URL", "http://nope").output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("broker.url"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_teardown_deletes_the_prefix_queues_only_when_told_yes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let broker = env.broker().await?; // declares the topology
    // A passive declare of the work queue: fails (and closes its channel) once it is gone.
    async fn exists(broker: &reasonrec_queue::Broker) -> anyhow::Result<bool> {
        let ch = broker.channel().await?;
        Ok(broker.topology().queue_depth(&ch, &broker.topology().work_queue).await.is_ok())
    }
    assert!(exists(&broker).await?);
    let config = write_config(&env, 4)?;
    let teardown = |extra: &[&str]| {
        let mut args = vec!["--config".to_string(), config.display().to_string(), "broker-teardown".into()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Command::new(BIN).args(args).output()
    };
    let refused = teardown(&[])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert!(exists(&broker).await?, "nothing deleted without --yes");
    let done = teardown(&["--yes"])?;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(!exists(&broker).await?, "the work queue is gone");
    let again = teardown(&["--yes"])?;
    assert!(
        again.status.success(),
        "nothing left to delete is not an error: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!exists(&broker).await?, "and it declared nothing");
    broker.close().await;
    let _ = std::fs::remove_file(config);
    env.cleanup().await
}

/// A directory with one user, one movie and `n` ratings at distinct times, then `tail`.
fn ratings_dir(tag: &str, n: usize, tail: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rr-cli-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("users.dat"), "1::F::1::10::48067\n")?;
    std::fs::write(dir.join("movies.dat"), "1::Heat (1995)::Action\n")?;
    let mut ratings = String::new();
    for i in 0..n {
        ratings.push_str(&format!("1::1::{}::{}\n", 1 + i % 5, 978_300_000 + i));
    }
    ratings.push_str(tail);
    std::fs::write(dir.join("ratings.dat"), ratings)?;
    Ok(dir)
}

async fn datasets_named(env: &TestEnv, name: &str) -> anyhow::Result<(i64, i64)> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM datasets WHERE name = $1")
        .bind(name)
        .fetch_one(env.store.pool())
        .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions").fetch_one(env.store.pool()).await?;
    Ok((n, rows))
}

/// The ingest streams rows to Postgres as it parses: a bad line after 50,000 good ones (three
/// batches already sent) is reported with file, line and field, and nothing of the dataset is
/// stored.
#[tokio::test]
async fn ingest_reports_a_bad_line_with_file_line_and_field_and_stores_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let config = write_config(&env, 4)?;
    let dir = ratings_dir("bad", 50_000, "1::1::4::yesterday\n")?;
    let out = Command::new(BIN)
        .args([
            "--config",
            &config.display().to_string(),
            "ingest",
            "--path",
            &dir.display().to_string(),
            "--dataset",
            "bad",
        ])
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ratings.dat:50001: field `timestamp`"), "{err}");
    assert_eq!(datasets_named(&env, "bad").await?, (0, 0), "all or nothing");
    let _ = std::fs::remove_file(config);
    env.cleanup().await
}

/// Exact repeats of (user, item, time) in a streamed file are dropped by the writer (the first
/// kept) and counted; the same file again is unchanged and writes nothing.
#[tokio::test]
async fn a_streamed_ingest_drops_repeats_and_an_unchanged_file_writes_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let config = write_config(&env, 4)?;
    // 30,000 ratings, then the first 10 again with other ratings: 10 exact repeats.
    let repeats: String = (0..10).map(|i| format!("1::1::{}::{}\n", 5 - i % 5, 978_300_000 + i)).collect();
    let dir = ratings_dir("dup", 30_000, &repeats)?;
    let ingest = || {
        Command::new(BIN)
            .args(["--config", &config.display().to_string(), "ingest", "--json"])
            .args(["--path", &dir.display().to_string(), "--dataset", "dup"])
            .output()
    };
    let first = ingest()?;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout)?;
    assert_eq!((report["outcome"].as_str(), report["interactions"].as_i64()), (Some("ingested"), Some(30_000)));
    let (dropped, first_rating): (i64, f32) = (
        sqlx::query_scalar("SELECT (source->>'duplicates_dropped')::bigint FROM datasets WHERE name = 'dup'")
            .fetch_one(env.store.pool())
            .await?,
        sqlx::query_scalar("SELECT rating FROM interactions WHERE ts = 978300000").fetch_one(env.store.pool()).await?,
    );
    assert_eq!((dropped, first_rating), (10, 1.0), "the repeats went, the first of each stayed");
    let again = ingest()?;
    let report: serde_json::Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(report["outcome"], "unchanged");
    assert_eq!(datasets_named(&env, "dup").await?, (1, 30_000));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(config);
    env.cleanup().await
}

#[tokio::test]
async fn dataset_stats_reports_counts_histogram_like_share_and_k_cores() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.ingest_sample().await?;
    let config = write_config(&env, 4)?;
    let out = Command::new(BIN)
        .args(["--config", &config.display().to_string(), "dataset", "stats", "sample", "--json"])
        .output()?;
    let _ = std::fs::remove_file(&config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((v["users"].as_i64(), v["items"].as_i64()), (Some(300), Some(400)));
    let n = v["interactions"].as_i64().unwrap_or(0);
    let hist: i64 = v["rating_histogram"].as_array().map_or(0, |h| h.iter().filter_map(|b| b["count"].as_i64()).sum());
    assert_eq!(hist, n, "the histogram covers every interaction");
    let share = v["like_share"].as_f64().unwrap_or(-1.0);
    assert!(share > 0.3 && share < 0.8, "{share}");
    let cores = v["k_cores"].as_array().cloned().unwrap_or_default();
    assert_eq!(cores.len(), 3);
    assert_eq!(cores[0]["users"].as_i64(), Some(300), "every sample user has at least 20 ratings");
    assert!(cores[2]["interactions"].as_i64().unwrap_or(0) <= n);
    env.cleanup().await
}
