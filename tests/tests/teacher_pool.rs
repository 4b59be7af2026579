//! Several endpoints, each a real mock server: weights, failover, circuit breaker, rejected
//! credentials, and limits shared by workers through leases in Postgres.

use reasonrec_core::settings::{EndpointSettings, TeacherSettings};
use reasonrec_mock_teacher::{MockConfig, MockHandle};
use reasonrec_teacher::{TeacherError, TeacherPool};
use reasonrec_tests::teacher_calls::{messages, mock};

fn endpoint(name: &str, m: &MockHandle, weight: u32) -> EndpointSettings {
    EndpointSettings {
        name: name.into(),
        base_url: m.base_url(),
        weight,
        timeout_secs: 5,
        ..EndpointSettings::default()
    }
}

fn pool(endpoints: Vec<EndpointSettings>) -> anyhow::Result<TeacherPool> {
    let settings = TeacherSettings {
        endpoints,
        backoff_min_ms: 5,
        backoff_max_ms: 20,
        breaker_failures: 3,
        breaker_cooldown_secs: 30,
        ..TeacherSettings::default()
    };
    Ok(TeacherPool::new(&settings)?)
}

#[tokio::test]
async fn requests_follow_the_weights() -> anyhow::Result<()> {
    let (a, b) = (mock(MockConfig::default()).await?, mock(MockConfig::default()).await?);
    let p = pool(vec![endpoint("a", &a, 3), endpoint("b", &b, 1)])?;
    for _ in 0..400 {
        let r = p.call(&messages()).await;
        assert!(r.result.is_ok());
    }
    let (na, nb) = (a.stats().ok, b.stats().ok);
    assert_eq!(na + nb, 400);
    assert!((255..=345).contains(&na), "3:1 split of 400, got {na}:{nb}");
    Ok(())
}

#[tokio::test]
async fn a_failing_endpoint_is_taken_out_and_the_other_serves() -> anyhow::Result<()> {
    let (bad, good) =
        (mock(MockConfig { rate_5xx: 1.0, ..MockConfig::default() }).await?, mock(MockConfig::default()).await?);
    let p = pool(vec![endpoint("bad", &bad, 1), endpoint("good", &good, 1)])?;
    for _ in 0..100 {
        let r = p.call(&messages()).await;
        assert!(r.result.is_ok(), "{:?}", r.result.err());
    }
    assert_eq!(good.stats().ok, 100);
    assert_eq!(bad.stats().requests, 3, "the circuit opened after 3 failures in a row and stayed open (30 s cooldown)");
    Ok(())
}

#[tokio::test]
async fn rejected_credentials_disable_the_endpoint_without_failing_the_call() -> anyhow::Result<()> {
    let locked = mock(MockConfig { api_key: Some("the-right-key".into()), ..MockConfig::default() }).await?;
    let open = mock(MockConfig::default()).await?;
    // The key comes from a variable that is surely set and surely not the key.
    let mut locked_ep = endpoint("locked", &locked, 1);
    locked_ep.api_key_env = Some("PATH".into());
    let p = pool(vec![locked_ep.clone(), endpoint("open", &open, 1)])?;
    for _ in 0..50 {
        let r = p.call(&messages()).await;
        assert!(r.result.is_ok());
    }
    assert_eq!(locked.stats().unauthorized, 1, "one 401, then the endpoint is out");
    assert_eq!(open.stats().ok, 50);

    // Alone, it leaves nothing to call: the error says so, and is fatal for a worker.
    let p = pool(vec![locked_ep])?;
    let r = p.call(&messages()).await;
    assert!(matches!(&r.result, Err(e @ TeacherError::NoEndpoint { .. }) if e.is_fatal()), "{:?}", r.result);
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].http_status, Some(401));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_is_a_ceiling() -> anyhow::Result<()> {
    let m = mock(MockConfig::default()).await?;
    let mut ep = endpoint("m", &m, 1);
    ep.requests_per_minute = 600; // 10/s
    let p = pool(vec![ep])?;
    let msgs = messages();
    let calls: Vec<_> = (0..40).map(|_| p.call(&msgs)).collect();
    futures::future::join_all(calls).await;
    let s = m.stats();
    let span = (s.last_ok_ms.unwrap_or(0) - s.first_ok_ms.unwrap_or(0)) as f64 / 1000.0;
    assert_eq!(s.ok, 40);
    assert!(span >= 39.0 / 10.0 * 0.97, "40 requests at <= 10/s take >= 3.8 s, took {span:.2} s");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_usage_counts_are_replaced_by_estimates_and_never_wrap() -> anyhow::Result<()> {
    // A broken server reports u32::MAX tokens both ways: stored as-is it wrapped negative in the
    // ledger (`as i32`), bypassed `budget_tokens` and stalled the token buckets (issue 16).
    let m = mock(MockConfig { usage_override: Some(u32::MAX), ..MockConfig::default() }).await?;
    let p = pool(vec![endpoint("broken", &m, 1)])?;
    let before = reasonrec_core::metrics::metrics()
        .teacher_usage_anomalies
        .get_or_create(&vec![("endpoint", "broken".to_string())])
        .get();
    let r = p.call(&messages()).await;
    let (answer, _) = r.result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let estimate = reasonrec_teacher::protocol::estimate_prompt_tokens(&messages());
    assert_eq!(answer.input_tokens, estimate);
    assert!(answer.usage_estimated);
    let attempt = r.attempts.last().ok_or_else(|| anyhow::anyhow!("no attempt recorded"))?;
    assert!(attempt.input_tokens >= 0 && attempt.output_tokens >= 0, "{attempt:?}");
    assert_eq!(attempt.input_tokens, i32::try_from(estimate)?);
    let after = reasonrec_core::metrics::metrics()
        .teacher_usage_anomalies
        .get_or_create(&vec![("endpoint", "broken".to_string())])
        .get();
    assert_eq!(after - before, 1, "the anomaly is counted");
    Ok(())
}
