//! The Anthropic Messages protocol (issue 17), against the mock speaking it over real HTTP: the
//! headers and body a real server requires, the answer's text, stop reason and cache-token usage
//! priced apart, 529 overloaded retried, `anthropic-ratelimit-*` resets obeyed, and a whole run
//! worked through an Anthropic endpoint.

use reasonrec_coordinator::create_run;
use reasonrec_core::ChatMessage;
use reasonrec_core::settings::{EndpointSettings, Protocol};
use reasonrec_core::stage::TaskState;
use reasonrec_mock_teacher::{MockConfig, MockHandle};
use reasonrec_teacher::{TeacherClient, TeacherError};
use reasonrec_tests::teacher_calls::{PROMPT, mock, pool};
use reasonrec_tests::{TestEnv, count};
use std::time::{Duration, Instant};

/// An Anthropic endpoint on `m`, its key read from `PATH` (a variable surely set).
fn endpoint(m: &MockHandle) -> EndpointSettings {
    EndpointSettings {
        name: "claude".into(),
        base_url: m.base_url(),
        protocol: Protocol::Anthropic,
        model: "claude-mock".into(),
        api_key_env: Some("PATH".into()),
        timeout_secs: 10,
        price_input_per_mtok: 3.0,
        price_output_per_mtok: 15.0,
        ..EndpointSettings::default()
    }
}

fn key() -> Option<String> {
    std::env::var("PATH").ok()
}

/// A system prompt and the reasoning prompt: the system part must travel as `system`.
fn with_system() -> Vec<ChatMessage> {
    vec![
        ChatMessage { role: "system".into(), content: "You explain recommendations.".into() },
        ChatMessage { role: "user".into(), content: PROMPT.into() },
    ]
}

#[tokio::test]
async fn an_anthropic_answer_is_read_and_its_cache_tokens_priced_apart() -> anyhow::Result<()> {
    let m = mock(MockConfig { api_key: key(), cache_read_tokens: 8, ..MockConfig::default() }).await?;
    let client = TeacherClient::new(&endpoint(&m))?;
    let ep = endpoint(&m);
    let a = client.chat(&with_system(), &ep.params).await?;
    assert!(a.text.contains("Casino (1995)"), "{}", a.text);
    assert_eq!(a.finish_reason.as_deref(), Some("stop"), "end_turn reads as a natural end");
    assert_eq!(a.cache_read_tokens, 8);
    assert!(!a.usage_estimated);
    let stats = m.stats();
    assert_eq!(stats.by_protocol.get("anthropic"), Some(&1));
    assert_eq!(stats.system_fields, 1, "the system prompt went as its own field");
    assert_eq!(a.input_tokens as u64, stats.prompt_tokens, "input = input_tokens + cache reads + cache writes");
    let expected = (f64::from(a.input_tokens - 8) * 3.0 + 8.0 * 0.3 + f64::from(a.output_tokens) * 15.0) / 1e6;
    assert!((client.cost_usd(&a.usage()) - expected).abs() < 1e-12);

    // Cut off at max_tokens: stop_reason max_tokens is a truncation, as OpenAI's "length".
    let short = reasonrec_core::settings::SamplingParams { max_tokens: 3, ..ep.params.clone() };
    let a = client.chat(&with_system(), &short).await?;
    assert_eq!(a.finish_reason.as_deref(), Some("length"));
    Ok(())
}

#[tokio::test]
async fn the_mock_refuses_what_a_real_anthropic_server_refuses() -> anyhow::Result<()> {
    let m = mock(MockConfig { api_key: Some("the-key".into()), ..MockConfig::default() }).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/messages", m.base_url());
    let body = serde_json::json!({"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]});
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await?;
        Ok::<_, anyhow::Error>((r.status().as_u16(), r.json::<serde_json::Value>().await?))
    };
    let (status, err) = send(http.post(&url).bearer_auth("the-key").json(&body)).await?;
    assert_eq!((status, err["error"]["type"].as_str()), (401, Some("authentication_error")), "Bearer is OpenAI's");
    assert!(err["request_id"].as_str().is_some_and(|r| r.starts_with("req_")), "{err}");
    let (status, err) = send(http.post(&url).header("x-api-key", "the-key").json(&body)).await?;
    assert_eq!((status, err["error"]["type"].as_str()), (400, Some("invalid_request_error")), "no anthropic-version");
    let ok = |b: &serde_json::Value| {
        http.post(&url).header("x-api-key", "the-key").header("anthropic-version", "2023-06-01").json(b)
    };
    let (status, answer) = send(ok(&body)).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["type"], "text");
    let no_max = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(send(ok(&no_max)).await?.0, 400, "max_tokens is required");
    let system_role =
        serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]});
    assert_eq!(send(ok(&system_role)).await?.0, 400, "no system role among the messages");
    Ok(())
}

#[tokio::test]
async fn overloaded_529_and_500_are_retried_and_recorded() -> anyhow::Result<()> {
    let m = mock(MockConfig { api_key: key(), rate_5xx: 0.5, seed: 7, ..MockConfig::default() }).await?;
    let p = pool(vec![endpoint(&m)], 8)?;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = p.call(&with_system()).await;
        assert!(r.result.is_ok(), "{:?}", r.result.err());
        statuses.extend(r.attempts.iter().filter(|a| a.error_class.is_some()).map(|a| a.http_status));
    }
    let stats = m.stats();
    assert_eq!(statuses.len() as u64, stats.injected_5xx, "every failed request is an attempt: {stats:?}");
    assert!(statuses.contains(&Some(529)) && statuses.contains(&Some(500)), "{statuses:?}");
    assert_eq!(stats.ok, 30);
    Ok(())
}

#[tokio::test]
async fn an_exhausted_anthropic_budget_pauses_the_endpoint_until_its_reset() -> anyhow::Result<()> {
    // Two requests a minute: the second answer reports 0 remaining with a reset ~60 s away. The
    // client pauses (cut to max_wait, 1 s here) instead of sending the third at once.
    let m = mock(MockConfig { api_key: key(), requests_per_minute: 2, ..MockConfig::default() }).await?;
    let client = TeacherClient::new(&endpoint(&m))?.with_max_wait(Duration::from_secs(1));
    let params = endpoint(&m).params;
    client.chat(&with_system(), &params).await?;
    client.chat(&with_system(), &params).await?;
    let t0 = Instant::now();
    let third = client.chat(&with_system(), &params).await;
    assert!(t0.elapsed() >= Duration::from_millis(900), "the reset header paused the client: {:?}", t0.elapsed());
    match third {
        Err(TeacherError::RateLimited { status: 429, retry_after: Some(wait) }) => {
            assert!(wait <= Duration::from_secs(1), "retry-after cut to max_wait: {wait:?}")
        }
        other => panic!("expected the mock's 429, got {other:?}"),
    }
    assert_eq!(m.stats().over_limit, 1);
    Ok(())
}

/// A spend limit (Anthropic: 429 without retry-after) is not waited out: the endpoint is taken
/// out at its first such answer and the other endpoint serves; alone, nothing is left to call,
/// which stops a worker (its messages stay queued) instead of failing every task.
#[tokio::test]
async fn a_spend_limit_takes_the_endpoint_out_instead_of_being_retried() -> anyhow::Result<()> {
    let capped = mock(MockConfig { api_key: key(), spend_limit: true, ..MockConfig::default() }).await?;
    let open = mock(MockConfig { api_key: key(), ..MockConfig::default() }).await?;
    let capped_ep = EndpointSettings { name: "capped".into(), ..endpoint(&capped) };
    let p = pool(vec![capped_ep.clone(), EndpointSettings { name: "open".into(), ..endpoint(&open) }], 4)?;
    for _ in 0..20 {
        let r = p.call(&with_system()).await;
        assert!(r.result.is_ok(), "{:?}", r.result.err());
    }
    assert_eq!(capped.stats().requests, 1, "one 429 without retry-after, then the endpoint is out");
    assert_eq!(open.stats().ok, 20);

    let alone = pool(vec![capped_ep], 4)?;
    let r = alone.call(&with_system()).await;
    assert!(matches!(&r.result, Err(e @ TeacherError::NoEndpoint { .. }) if e.is_fatal()), "{:?}", r.result);
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].error_class, Some(reasonrec_core::attempt::ErrorClass::RateLimited));
    // OpenAI's insufficient_quota (a 429 naming it) likewise.
    let openai = EndpointSettings { protocol: Protocol::OpenAi, ..endpoint(&capped) };
    let r = TeacherClient::new(&openai)?.chat(&with_system(), &openai.params).await;
    assert!(matches!(r, Err(TeacherError::SpendLimit { status: 429 })), "{r:?}");
    // A 429 that says when to come back stays a wait, as before.
    let limited = mock(MockConfig { api_key: key(), rate_429: 1.0, ..MockConfig::default() }).await?;
    let client = TeacherClient::new(&endpoint(&limited))?;
    let r = client.chat(&with_system(), &endpoint(&limited).params).await;
    assert!(matches!(r, Err(TeacherError::RateLimited { retry_after: Some(_), .. })), "{r:?}");
    Ok(())
}

/// A whole run through an Anthropic endpoint that overloads now and then and sends broken
/// bodies: every task done, every request a ledger row with its cost, and the outputs keyed
/// under the Anthropic protocol (not reusable by an OpenAI endpoint of the same model name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_through_an_anthropic_endpoint_completes_and_pays_every_request() -> anyhow::Result<()> {
    let cfg = MockConfig { api_key: key(), rate_5xx: 0.1, rate_malformed: 0.05, seed: 17, ..MockConfig::default() };
    let mut env = TestEnv::with_mock(cfg).await?;
    env.settings.teacher.endpoints = vec![endpoint(&env.mock)];
    env.settings.teacher.max_attempts = 6;
    env.settings.teacher.breaker_failures = 1_000;
    env.ingest_sample().await?;
    let run = create_run(&env.store, &env.settings, "sample").await?.run_id;
    env.run_to_completion(run).await?;

    let stats = env.mock.stats();
    let tasks = count(&env.store, "SELECT count(*) FROM tasks WHERE run_id = $1", run).await?;
    let done = env.tasks_in(run, TaskState::Done).await?;
    assert!(tasks > 0 && done == tasks, "{done} of {tasks} done");
    let rows = count(&env.store, "SELECT count(*) FROM attempts WHERE run_id = $1", run).await?;
    assert_eq!(rows as u64, stats.requests, "every request is in the ledger: {stats:?}");
    assert_eq!(stats.by_protocol.get("anthropic").copied(), Some(stats.requests));
    assert!(stats.injected_5xx > 0 && stats.malformed > 0, "{stats:?}");
    let unpriced = count(
        &env.store,
        "SELECT count(*) FROM attempts WHERE run_id = $1 AND error_class IS NULL AND NOT cost_usd > 0",
        run,
    )
    .await?;
    assert_eq!(unpriced, 0, "every accepted answer has its cost");

    // The same prompts to an OpenAI endpoint of the same model name are new questions: the
    // protocol is part of the content key. Asked again of the Anthropic endpoint, none is.
    env.mock.set_config(MockConfig { api_key: key(), ..MockConfig::default() }).map_err(anyhow::Error::msg)?;
    for (protocol, asked) in [(Protocol::OpenAi, tasks as u64), (Protocol::Anthropic, 0)] {
        env.mock.reset_stats();
        env.settings.teacher.endpoints[0].protocol = protocol;
        let again = create_run(&env.store, &env.settings, "sample").await?.run_id;
        env.run_to_completion(again).await?;
        let done = env.tasks_in(again, TaskState::Done).await?;
        assert_eq!(done, tasks);
        assert_eq!(env.mock.stats().ok, asked, "{protocol}: {:?}", env.mock.stats());
    }
    env.cleanup().await
}
