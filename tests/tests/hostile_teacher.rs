//! A teacher endpoint that misbehaves (issue 16): every misbehaviour ends as a clear, counted error
//! class with bounded memory and time, every request that reached the server is a row in the cost
//! ledger, and nothing secret leaves the process.

use reasonrec_coordinator::create_run;
use reasonrec_core::settings::{EndpointSettings, TeacherSettings};
use reasonrec_core::stage::TaskState;
use reasonrec_mock_teacher::{MockConfig, MockHandle, RetryAfterFormat};
use reasonrec_teacher::{TeacherClient, TeacherError, TeacherPool};
use reasonrec_tests::teacher_calls::{messages, mock, pool};
use reasonrec_tests::{TestEnv, count};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn endpoint(m: &MockHandle) -> EndpointSettings {
    EndpointSettings { name: "hostile".into(), base_url: m.base_url(), timeout_secs: 10, ..EndpointSettings::default() }
}

/// The peak resident set of this process, in MiB (`VmHWM`).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_is_not_read_past_the_cap() -> anyhow::Result<()> {
    // 300 MB of body, chunked (no Content-Length to refuse it by), against a 64 KiB cap.
    let m = mock(MockConfig { rate_huge_body: 1.0, huge_body_bytes: 300 << 20, ..MockConfig::default() }).await?;
    let before = peak_rss_mib();
    let ep = EndpointSettings { max_response_bytes: 64 << 10, ..endpoint(&m) };
    let out = pool(vec![ep], 3)?.call(&messages()).await;
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(
        matches!(out.result, Err(TeacherError::TooLarge { what: "response body", limit: 65_536, .. })),
        "{:?}",
        out.result
    );
    assert_eq!(out.attempts.len(), 3, "retried like any transient fault, each attempt recorded");
    assert!(out.attempts.iter().all(|a| a.error_class.map(|c| c.as_str()) == Some("too_large")));
    assert_eq!(m.stats().huge_bodies, 3);
    assert!(grown < 100, "peak RSS grew {grown} MiB reading three 300 MB bodies");
    Ok(())
}

#[tokio::test]
async fn an_answer_over_the_character_cap_is_not_kept() -> anyhow::Result<()> {
    let m = mock(MockConfig::default()).await?;
    let ep = EndpointSettings { max_answer_chars: 40, ..endpoint(&m) };
    let out = pool(vec![ep], 1)?.call(&messages()).await;
    assert!(matches!(out.result, Err(TeacherError::TooLarge { limit: 40, .. })), "{:?}", out.result);
    assert_eq!(out.attempts[0].error_class.map(|c| c.as_str()), Some("too_large"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_retry_after_is_capped_and_a_wait_past_the_call_time_hands_the_task_back() -> anyhow::Result<()> {
    for format in [RetryAfterFormat::Seconds, RetryAfterFormat::HttpDate, RetryAfterFormat::Milliseconds] {
        // The server asks for an hour; the cap is 1 s and a call may take 2 s.
        let m = mock(MockConfig {
            rate_429: 1.0,
            retry_after_secs: 3_600,
            retry_after_format: format,
            ..MockConfig::default()
        })
        .await?;
        let settings = TeacherSettings {
            endpoints: vec![endpoint(&m)],
            max_attempts: 10,
            max_retry_after_secs: 1,
            max_call_secs: 2,
            ..TeacherSettings::default()
        };
        let out = TeacherPool::new(&settings)?.call(&messages()).await;
        let Err(TeacherError::Deferred { wait, limit }) = out.result else {
            panic!("{format:?}: {:?}", out.result);
        };
        assert!(wait <= Duration::from_secs(1), "{format:?}: waited {wait:?}, over the 1 s cap");
        assert_eq!(limit, Duration::from_secs(2));
        assert!(
            (1..=3).contains(&out.attempts.len()),
            "{format:?}: {} attempts in a 2 s call with 1 s waits",
            out.attempts.len()
        );
        assert_eq!(m.stats().requests, out.attempts.len() as u64, "{format:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed() -> anyhow::Result<()> {
    let elsewhere = mock(MockConfig::default()).await?;
    let m = mock(MockConfig { rate_redirect: 1.0, redirect_to: Some(elsewhere.base_url()), ..MockConfig::default() })
        .await?;
    let out = pool(vec![endpoint(&m)], 3)?.call(&messages()).await;
    assert!(matches!(out.result, Err(TeacherError::Redirect { status: 307 })), "{:?}", out.result);
    assert_eq!(out.attempts.len(), 1, "permanent: not retried");
    assert_eq!(elsewhere.stats().requests, 0, "the prompt never reached the other origin");
    Ok(())
}

#[test]
fn an_api_key_goes_only_over_https_or_to_this_machine() {
    // PATH is surely set: it stands for the key.
    let ep = |url: &str| EndpointSettings {
        base_url: url.into(),
        api_key_env: Some("PATH".into()),
        ..EndpointSettings::default()
    };
    let refused = TeacherClient::new(&ep("http://10.1.2.3:8000/v1"));
    assert!(matches!(refused, Err(TeacherError::InsecureKey { .. })), "{refused:?}");
    assert!(refused.err().is_some_and(|e| e.is_fatal()));
    for ok in
        ["https://api.example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"]
    {
        assert!(TeacherClient::new(&ep(ok)).is_ok(), "{ok}");
    }
    let no_key = EndpointSettings { base_url: "http://10.1.2.3:8000/v1".into(), ..EndpointSettings::default() };
    assert!(TeacherClient::new(&no_key).is_ok(), "no key, nothing to leak");
}

/// A run against a server that sends NUL characters, huge bodies and redirects: it completes,
/// every request the server saw is an attempt row, nothing reached the other origin, and every
/// fault is a named class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_a_hostile_server_records_every_request_and_completes() -> anyhow::Result<()> {
    let elsewhere = mock(MockConfig::default()).await?;
    let hostile = MockConfig {
        rate_nul: 0.2,
        rate_huge_body: 0.1,
        huge_body_bytes: 4 << 20,
        rate_redirect: 0.05,
        redirect_to: Some(elsewhere.base_url()),
        seed: 16,
        ..MockConfig::default()
    };
    let mut env = TestEnv::with_mock(hostile).await?;
    env.settings.teacher.endpoints[0].max_response_bytes = 256 << 10;
    env.settings.teacher.max_attempts = 4;
    env.settings.teacher.breaker_failures = 1_000;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;

    let stats = env.mock.stats();
    let rows = count(&env.store, "SELECT count(*) FROM attempts WHERE run_id = $1", run).await?;
    assert_eq!(rows as u64, stats.requests, "every request that reached the server is in the ledger: {stats:?}");
    assert_eq!(elsewhere.stats().requests, 0);
    let store = &env.store;
    let class = |c: &'static str| async move {
        count(store, &format!("SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class = '{c}'"), run).await
    };
    assert_eq!(class("too_large").await? as u64, stats.huge_bodies);
    assert_eq!(class("redirect").await? as u64, stats.redirects);
    assert!(stats.nul_answers > 0 && stats.huge_bodies > 0 && stats.redirects > 0, "{stats:?}");
    assert!(
        class("malformed").await? + class("server").await? >= stats.nul_answers as i64,
        "a NUL answer is malformed, a NUL error page a server error"
    );
    let unfinished =
        count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1 AND state NOT IN ('done', 'failed')", run)
            .await?;
    assert_eq!(unfinished, 0);
    let redirected_failed = count(
        &env.store,
        "SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'failed' AND last_error LIKE '%another origin%'",
        run,
    )
    .await?;
    assert_eq!(redirected_failed as u64, stats.redirects, "a redirect fails its task, with the reason");
    env.cleanup().await
}

/// A writer into a shared buffer, to read what the process logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Credentials planted in an endpoint's URL (userinfo and query) reach no log line, no attempt
/// row, no task error and no `Debug`, while the calls to it fail.
#[tokio::test]
async fn a_secret_in_an_endpoint_url_leaves_the_process_nowhere() -> anyhow::Result<()> {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("info,reasonrec_worker=debug,reasonrec_teacher=debug,reasonrec_coordinator=debug")
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut env = TestEnv::new().await?;
    // A port nothing listens on: every call fails to connect, with reqwest's URL-naming error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("http://operator:PLANTED-pw%2Fx@{closed}/v1?api_key=PLANTED-query");
    env.settings.teacher.endpoints[0].base_url = url;
    env.settings.teacher.max_attempts = 2;
    env.settings.teacher.breaker_failures = 1_000;
    env.settings.sampling.max_users = 3;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;

    let failed = env.tasks_in(run, TaskState::Failed).await?;
    assert!(failed > 0, "the calls failed, so their errors were written");
    let in_rows = count(
        &env.store,
        "SELECT (SELECT count(*) FROM attempts WHERE run_id = $1 AND error LIKE '%PLANTED%')
              + (SELECT count(*) FROM tasks WHERE run_id = $1 AND last_error LIKE '%PLANTED%')",
        run,
    )
    .await?;
    assert_eq!(in_rows, 0, "a planted secret reached a row");
    let pool = TeacherPool::new(&env.settings.teacher)?;
    let printed = format!("{pool:?} {:?}", env.settings);
    assert!(!printed.contains("PLANTED"), "{printed}");
    let logs = String::from_utf8_lossy(&captured.0.lock().map(|b| b.clone()).unwrap_or_default()).into_owned();
    assert!(logs.contains("connect"), "the failures were logged: {logs}");
    assert!(!logs.contains("PLANTED"), "a planted secret reached a log line: {logs}");
    env.cleanup().await
}

/// A server that asks every task to wait an hour: each task's call ends at `max_call_secs`, its
/// attempts are recorded and its message goes back through a retry tier (not held past the
/// consumer timeout); once the server recovers, every task is done on a later delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_told_to_wait_past_their_time_go_back_to_the_queue_and_finish_later() -> anyhow::Result<()> {
    let busy = MockConfig { rate_429: 1.0, retry_after_secs: 3_600, ..MockConfig::default() };
    let mut env = TestEnv::with_mock(busy).await?;
    env.settings.teacher.max_retry_after_secs = 1;
    env.settings.teacher.max_call_secs = 2;
    env.settings.broker.retry_delays_secs = vec![1];
    env.settings.sampling.max_users = 3;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    let tasks = count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;

    let recover = async {
        // Every task has been handed back at least once (its attempts are in the ledger) ...
        let handed_back =
            "SELECT count(DISTINCT task_id) FROM attempts WHERE run_id = $1 AND error_class = 'rate_limited'";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while count(&env.store, handed_back, run).await? < tasks {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "tasks were not handed back within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ... and none is done while the server still refuses: then it recovers.
        let done = env.tasks_in(run, TaskState::Done).await?;
        env.mock.set_config(MockConfig::default()).map_err(anyhow::Error::msg)?;
        Ok::<_, anyhow::Error>(done)
    };
    let (completed, done_while_busy) = tokio::join!(env.run_to_completion(run), recover);
    completed?;
    assert_eq!(done_while_busy?, 0);
    let done = env.tasks_in(run, TaskState::Done).await?;
    assert_eq!(done, tasks, "every task finished after the server recovered");
    let rows = count(&env.store, "SELECT count(*) FROM attempts WHERE run_id = $1", run).await?;
    assert_eq!(rows as u64, env.mock.stats().requests, "every request is in the ledger, the handed-back ones included");
    let counted = count(&env.store, "SELECT sum(attempts)::bigint FROM tasks WHERE run_id = $1", run).await?;
    assert_eq!(counted, rows, "tasks.attempts counts the handed-back calls too");
    env.cleanup().await
}
