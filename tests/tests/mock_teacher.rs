//! The mock teacher over real HTTP, driven through reasonrec's own teacher client: faults on
//! demand, Retry-After in both forms, its own rate limit, and the client's retry policy.

use reasonrec_core::attempt::ErrorClass;
use reasonrec_core::settings::{EndpointSettings, SamplingParams};
use reasonrec_mock_teacher::{MockConfig, MockHandle, RetryAfterFormat};
use reasonrec_teacher::{RetryPolicy, TeacherClient, TeacherError, call_with_retries};
use reasonrec_tests::teacher_calls::{messages, mock};
use std::time::{Duration, Instant};

fn client(m: &MockHandle, timeout_secs: u64) -> anyhow::Result<TeacherClient> {
    Ok(TeacherClient::new(&EndpointSettings { base_url: m.base_url(), timeout_secs, ..EndpointSettings::default() })?)
}

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_call: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn answers_with_usage_and_agrees_with_the_stated_label() -> anyhow::Result<()> {
    let m = mock(MockConfig::default()).await?;
    let a = client(&m, 5)?.chat(&messages(), &SamplingParams::default()).await?;
    assert!(a.text.contains("«Casino (1995)»") && a.text.contains("strong match"), "{}", a.text);
    assert!(!a.usage_estimated && a.input_tokens > 0 && a.output_tokens > 0);
    assert_eq!(a.finish_reason.as_deref(), Some("stop"));
    let models: serde_json::Value = reqwest_get(&format!("{}/models", m.base_url())).await?;
    assert_eq!(models["data"][0]["id"], "mock-teacher");
    let s = m.stats();
    assert_eq!((s.requests, s.ok, s.by_kind.get("reasoning_like").copied()), (1, 1, Some(1)));
    Ok(())
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_finish_reason_length() -> anyhow::Result<()> {
    let m = mock(MockConfig::default()).await?;
    let params = SamplingParams { max_tokens: 5, ..SamplingParams::default() };
    let a = client(&m, 5)?.chat(&messages(), &params).await?;
    assert_eq!(a.finish_reason.as_deref(), Some("length"));
    assert!(a.output_tokens <= 5);
    Ok(())
}

#[tokio::test]
async fn injected_429_carries_retry_after_in_seconds_or_as_an_http_date() -> anyhow::Result<()> {
    let m = mock(MockConfig { rate_429: 1.0, retry_after_secs: 3, ..MockConfig::default() }).await?;
    let c = client(&m, 5)?;
    match c.chat(&messages(), &SamplingParams::default()).await {
        Err(TeacherError::RateLimited { status: 429, retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(3)))
        }
        other => panic!("expected 429, got {other:?}"),
    }
    m.set_config(MockConfig {
        rate_429: 1.0,
        retry_after_secs: 5,
        retry_after_format: RetryAfterFormat::HttpDate,
        ..MockConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    match c.chat(&messages(), &SamplingParams::default()).await {
        Err(TeacherError::RateLimited { retry_after: Some(d), .. }) => {
            assert!(d >= Duration::from_secs(3) && d <= Duration::from_secs(5), "{d:?}")
        }
        other => panic!("expected 429 with a date, got {other:?}"),
    }
    assert_eq!(m.stats().injected_429, 2);
    Ok(())
}

#[tokio::test]
async fn retry_after_is_honoured_by_the_retry_loop() -> anyhow::Result<()> {
    // Every other request is a 429 asking for 1 s; the backoff alone would wait 5-20 ms.
    let m = mock(MockConfig { rate_429: 0.5, retry_after_secs: 1, seed: 3, ..MockConfig::default() }).await?;
    let c = client(&m, 5)?;
    let t0 = Instant::now();
    let (r, attempts) = call_with_retries(&c, &messages(), &SamplingParams::default(), fast_policy(10)).await;
    assert!(r.is_ok(), "{r:?}");
    let limited = attempts.iter().filter(|a| a.error_class == Some(ErrorClass::RateLimited)).count();
    assert!(limited > 0, "seed 3 draws at least one 429");
    assert_eq!(limited as u64, m.stats().injected_429);
    assert!(
        t0.elapsed() >= Duration::from_secs(limited as u64),
        "waited {:?} for {limited} Retry-After: 1",
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn server_errors_and_malformed_bodies_are_retried_and_recorded() -> anyhow::Result<()> {
    let m = mock(MockConfig { rate_5xx: 0.4, rate_malformed: 0.4, seed: 11, ..MockConfig::default() }).await?;
    let c = TeacherClient::new(&EndpointSettings {
        base_url: m.base_url(),
        timeout_secs: 5,
        price_input_per_mtok: 1.0,
        ..EndpointSettings::default()
    })?;
    let (mut malformed, mut failed) = (0, 0);
    for _ in 0..10 {
        let (r, attempts) = call_with_retries(&c, &messages(), &SamplingParams::default(), fast_policy(30)).await;
        assert!(r.is_ok(), "{r:?}");
        let last = attempts.last().map(|a| a.error_class);
        assert_eq!(last, Some(None), "the last attempt is the accepted one");
        for a in &attempts[..attempts.len() - 1] {
            match a.error_class {
                // A 2xx body we cannot use was billed: its reported usage, else its prompt.
                Some(ErrorClass::Malformed) => {
                    malformed += 1;
                    assert!(a.input_tokens > 0 && a.cost_usd > 0.0, "{a:?}");
                }
                // A 5xx was not.
                Some(ErrorClass::Server) => {
                    failed += 1;
                    assert!(a.input_tokens == 0 && a.cost_usd == 0.0, "{a:?}");
                }
                other => panic!("unexpected attempt {other:?}"),
            }
        }
    }
    assert!(malformed > 0 && failed > 0, "{malformed} malformed, {failed} failed");
    let s = m.stats();
    assert_eq!(s.ok, 10);
    assert!(s.injected_5xx > 0 && s.malformed > 0, "{s:?}");
    assert_eq!(s.requests, s.ok + s.injected_5xx + s.malformed);
    Ok(())
}

#[tokio::test]
async fn a_hanging_request_times_out_and_a_permanent_error_is_not_retried() -> anyhow::Result<()> {
    let m = mock(MockConfig { rate_hang: 1.0, hang_secs: 30, ..MockConfig::default() }).await?;
    let c = client(&m, 1)?;
    let t0 = Instant::now();
    let (r, attempts) = call_with_retries(&c, &messages(), &SamplingParams::default(), fast_policy(2)).await;
    assert!(matches!(r, Err(TeacherError::Timeout(_))), "{r:?}");
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a.error_class == Some(ErrorClass::Timeout) && a.http_status.is_none()));
    assert!(t0.elapsed() < Duration::from_secs(10));

    // An empty message list is a 400: permanent, one attempt only.
    let (r, attempts) = call_with_retries(&c, &[], &SamplingParams::default(), fast_policy(5)).await;
    assert!(matches!(r, Err(TeacherError::BadRequest { status: 400, .. })), "{r:?}");
    assert_eq!(attempts.len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_mock_enforces_its_own_requests_per_minute() -> anyhow::Result<()> {
    let m = mock(MockConfig { requests_per_minute: 5, ..MockConfig::default() }).await?;
    let c = client(&m, 5)?;
    let mut limited = 0;
    for _ in 0..8 {
        match c.chat(&messages(), &SamplingParams::default()).await {
            Ok(_) => {}
            Err(TeacherError::RateLimited { retry_after: Some(d), .. }) => {
                assert!(d > Duration::from_secs(50) && d <= Duration::from_secs(60), "{d:?}");
                limited += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let s = m.stats();
    assert_eq!((limited, s.ok, s.over_limit), (3, 5, 3));
    Ok(())
}

#[tokio::test]
async fn latency_is_applied() -> anyhow::Result<()> {
    let m = mock(MockConfig { latency_ms: 150, latency_jitter_ms: 50, ..MockConfig::default() }).await?;
    let c = client(&m, 5)?;
    let t0 = Instant::now();
    c.chat(&messages(), &SamplingParams::default()).await?;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2), "{took:?}");
    Ok(())
}

#[tokio::test]
async fn stats_and_config_are_served_over_http() -> anyhow::Result<()> {
    let m = mock(MockConfig::default()).await?;
    let root = format!("http://{}", m.addr);
    let http = reqwest::Client::new();
    let cfg = MockConfig { rate_5xx: 1.0, ..MockConfig::default() };
    let put = http.put(format!("{root}/config")).json(&cfg).send().await?;
    assert_eq!(put.status(), 200);
    let bad = http.put(format!("{root}/config")).json(&serde_json::json!({"rate_5xx": 2.0})).send().await?;
    assert_eq!(bad.status(), 400, "rates outside [0, 1] are refused");
    let r = client(&m, 5)?.chat(&messages(), &SamplingParams::default()).await;
    assert!(matches!(r, Err(TeacherError::Server { .. })), "{r:?}");
    let stats: serde_json::Value = reqwest_get(&format!("{root}/stats")).await?;
    assert_eq!(
        (stats["requests"].as_u64(), stats["injected_5xx"].as_u64(), stats["ok"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(http.post(format!("{root}/stats/reset")).send().await?.status(), 204);
    let stats: serde_json::Value = reqwest_get(&format!("{root}/stats")).await?;
    assert_eq!(stats["requests"].as_u64(), Some(0));
    Ok(())
}

async fn reqwest_get(url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(url).await?.json().await?)
}
