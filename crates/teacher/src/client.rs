//! A client for one teacher endpoint.

use crate::error::TeacherError;
use crate::health::Breaker;
use crate::limits::EndpointLimiter;
use crate::protocol::{ChatCompletionRequest, ChatCompletionResponse, estimate_prompt_tokens, estimate_tokens};
use reasonrec_core::ChatMessage;
use reasonrec_core::settings::{EndpointSettings, SamplingParams};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::sync::Arc;
use std::time::Duration;

/// An accepted HTTP answer (not yet validated for content).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    pub text: String,
    pub finish_reason: Option<String>,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// True when the server sent no `usage` and the counts are estimates.
    pub usage_estimated: bool,
    pub http_status: u16,
    /// The server's `x-ratelimit-remaining-*` reached 0: wait this long before the next request.
    pub pause: Option<Duration>,
}

#[derive(Clone)]
pub struct TeacherClient {
    http: reqwest::Client,
    endpoint: Arc<EndpointSettings>,
    url: String,
    api_key: Option<Arc<str>>,
    limiter: Arc<EndpointLimiter>,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for TeacherClient {
    // Written by hand so the API key can never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherClient")
            .field("endpoint", &self.endpoint.name)
            .field("url", &self.url)
            .field("has_api_key", &self.api_key.is_some())
            .finish()
    }
}

/// Parses Retry-After: delta-seconds (integer or decimal) or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(Duration::from_secs(3600)))
}

/// Durations of `x-ratelimit-reset-*` headers: `1s`, `6m0s`, `20ms`, `1h2m3.5s`, or seconds.
pub fn parse_reset(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = v.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().ok()?;
        number.clear();
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0.001
            }
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    (any && number.is_empty()).then(|| Duration::from_secs_f64(total.min(3600.0)))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// How long the server asked us to wait: Retry-After (ms, seconds or date), else the reset of
/// whichever `x-ratelimit-*` budget is exhausted.
fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_millis(ms));
    }
    if let Some(d) = header(headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(v, chrono::Utc::now())) {
        return Some(d);
    }
    exhausted_budget_reset(headers)
}

/// `x-ratelimit-remaining-{requests,tokens}: 0` -> the matching `x-ratelimit-reset-*`.
fn exhausted_budget_reset(headers: &HeaderMap) -> Option<Duration> {
    ["requests", "tokens"]
        .iter()
        .filter(|kind| {
            header(headers, &format!("x-ratelimit-remaining-{kind}")).and_then(|v| v.parse::<f64>().ok()) == Some(0.0)
        })
        .filter_map(|kind| header(headers, &format!("x-ratelimit-reset-{kind}")).and_then(parse_reset))
        .max()
}

fn snippet(body: &str) -> String {
    let mut s: String = body.chars().take(300).collect();
    if body.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// reqwest is built without a bundled crypto provider: install ring, the one provider of this
/// build, before the first client exists (a no-op when the binary already did).
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl TeacherClient {
    /// Builds a client. The API key is read from the environment variable the endpoint names;
    /// a missing variable is an error here, at start-up, not at the first task.
    pub fn new(endpoint: &EndpointSettings) -> Result<Self, TeacherError> {
        let api_key = match &endpoint.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Arc::from(v.as_str())),
                _ => {
                    return Err(TeacherError::MissingApiKey { endpoint: endpoint.name.clone(), var: var.clone() });
                }
            },
            None => None,
        };
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(endpoint.connect_timeout_secs))
            .timeout(Duration::from_secs(endpoint.timeout_secs))
            .pool_max_idle_per_host(endpoint.max_in_flight.max(1))
            .build()
            .map_err(|e| TeacherError::Connect(e.to_string()))?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", endpoint.base_url.trim_end_matches('/')),
            endpoint: Arc::new(endpoint.clone()),
            api_key,
            limiter: Arc::new(EndpointLimiter::new(endpoint)),
            breaker: Arc::new(Breaker::new(5, Duration::from_secs(5))),
        })
    }

    /// Replaces the circuit breaker's thresholds (from `teacher.breaker_*`).
    pub fn with_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker = Arc::new(Breaker::new(failures, cooldown));
        self
    }

    pub fn limiter(&self) -> &EndpointLimiter {
        &self.limiter
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn endpoint(&self) -> &EndpointSettings {
        &self.endpoint
    }

    /// Replaces the sampling parameters sent with every request.
    pub fn set_params(&mut self, params: SamplingParams) {
        let mut ep = (*self.endpoint).clone();
        ep.params = params;
        self.endpoint = Arc::new(ep);
    }

    pub fn cost_usd(&self, input_tokens: u32, output_tokens: u32) -> f64 {
        (f64::from(input_tokens) * self.endpoint.price_input_per_mtok
            + f64::from(output_tokens) * self.endpoint.price_output_per_mtok)
            / 1e6
    }

    /// One call under the endpoint's limits, no retry: waits for a slot, the pause, the request
    /// rate and the token budgets, then settles the token reservation with the real usage.
    pub async fn chat(&self, messages: &[ChatMessage], params: &SamplingParams) -> Result<ChatAnswer, TeacherError> {
        let waited = std::time::Instant::now();
        let admission = self.limiter.admit(estimate_prompt_tokens(messages), params.max_tokens).await;
        reasonrec_core::metrics::metrics().limit_wait(&self.endpoint.name, waited.elapsed().as_secs_f64());
        let result = self.send(messages, params).await;
        match &result {
            Ok(a) => self.limiter.settle(admission, a.input_tokens, a.output_tokens),
            // A refused request used nothing; any other failure may have been counted, keep the input.
            Err(TeacherError::RateLimited { .. }) => self.limiter.settle(admission, 0, 0),
            Err(_) => self.limiter.settle(admission, estimate_prompt_tokens(messages), 0),
        }
        if let Some(p) = result.as_ref().ok().and_then(|a| a.pause) {
            self.limiter.pause_for(p);
        }
        result
    }

    /// The HTTP exchange alone.
    async fn send(&self, messages: &[ChatMessage], params: &SamplingParams) -> Result<ChatAnswer, TeacherError> {
        let body = ChatCompletionRequest {
            model: self.endpoint.model.clone(),
            messages: messages.to_vec(),
            temperature: Some(params.temperature),
            top_p: params.top_p,
            max_tokens: Some(params.max_tokens),
            stop: params.stop.clone(),
        };
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let timeout = Duration::from_secs(self.endpoint.timeout_secs);
        let resp = req.send().await.map_err(|e| classify_transport(&e, timeout))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_of(resp.headers());
        let pause = exhausted_budget_reset(resp.headers());
        let text = resp.text().await.map_err(|e| classify_transport(&e, timeout))?;
        match status {
            200..=299 => self.parse_answer(status, &text, messages).map(|a| ChatAnswer { pause, ..a }),
            429 => Err(TeacherError::RateLimited { status, retry_after }),
            401 | 403 => Err(TeacherError::Auth { status }),
            408 => Err(TeacherError::Timeout(timeout)),
            400 | 413 | 422 if looks_like_context_overflow(&text) => {
                Err(TeacherError::ContextTooLong { status, body: snippet(&text) })
            }
            500..=599 => Err(TeacherError::Server { status, body: snippet(&text) }),
            _ => Err(TeacherError::BadRequest { status, body: snippet(&text) }),
        }
    }

    fn parse_answer(&self, status: u16, body: &str, messages: &[ChatMessage]) -> Result<ChatAnswer, TeacherError> {
        let parsed: ChatCompletionResponse = serde_json::from_str(body)
            .map_err(|e| TeacherError::Malformed { status, message: format!("{e}: {}", snippet(body)) })?;
        let Some(choice) = parsed.choices.into_iter().next() else {
            return Err(TeacherError::Malformed { status, message: "no choices in the answer".into() });
        };
        let Some(text) = choice.message.content else {
            return Err(TeacherError::Malformed { status, message: "the first choice has no text content".into() });
        };
        let (prompt_estimate, completion_estimate) = (estimate_prompt_tokens(messages), estimate_tokens(&text));
        let (input_tokens, output_tokens, usage_estimated) = match parsed.usage {
            Some(u)
                if plausible(u.prompt_tokens, prompt_estimate)
                    && plausible(u.completion_tokens, completion_estimate) =>
            {
                (u.prompt_tokens, u.completion_tokens, false)
            }
            Some(u) => {
                // A broken server's counts would stall the token buckets, overflow the ledger's
                // columns and skew the budget: use the estimates and count the anomaly.
                tracing::warn!(endpoint = %self.endpoint().name, reported_in = u.prompt_tokens, reported_out = u.completion_tokens,
                               estimate_in = prompt_estimate, estimate_out = completion_estimate, "implausible token usage; using estimates");
                reasonrec_core::metrics::metrics()
                    .teacher_usage_anomalies
                    .get_or_create(&vec![("endpoint", self.endpoint().name.clone())])
                    .inc();
                (prompt_estimate, completion_estimate, true)
            }
            None => (prompt_estimate, completion_estimate, true),
        };
        Ok(ChatAnswer {
            text,
            finish_reason: choice.finish_reason,
            input_tokens,
            output_tokens,
            usage_estimated,
            http_status: status,
            pause: None,
        })
    }
}

/// A reported token count is believed unless it is far beyond the text it counts: more than 8x
/// the 4-characters-per-token estimate plus 4,096 (tokenizers differ, never by that much).
fn plausible(reported: u32, estimate: u32) -> bool {
    u64::from(reported) <= u64::from(estimate) * 8 + 4_096
}

fn looks_like_context_overflow(body: &str) -> bool {
    let b = body.to_lowercase();
    ["context length", "context_length", "maximum context", "too many tokens", "prompt is too long", "context window"]
        .iter()
        .any(|p| b.contains(p))
}

fn classify_transport(e: &reqwest::Error, timeout: Duration) -> TeacherError {
    if e.is_timeout() {
        TeacherError::Timeout(timeout)
    } else if e.is_connect() {
        TeacherError::Connect(e.to_string())
    } else if e.is_decode() || e.is_body() {
        TeacherError::Malformed { status: 0, message: e.to_string() }
    } else {
        TeacherError::Connect(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_token_count_far_beyond_its_text_is_not_believed() {
        assert!(plausible(100, 100) && plausible(800 + 4_096, 100));
        assert!(!plausible(800 + 4_097, 100));
        assert!(!plausible(u32::MAX, 1_000));
        assert!(plausible(u32::MAX, u32::MAX), "no overflow at the top");
        assert!(plausible(0, 50), "a server may count fewer");
    }

    #[test]
    fn retry_after_both_forms() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).single().unwrap_or_default();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0.5", now), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Thu, 26 Nov 2026 12:00:09 GMT", now), Some(Duration::from_secs(9)));
        assert_eq!(parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn rate_limit_reset_durations() {
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_reset("1m2.5s"), Some(Duration::from_secs_f64(62.5)));
        assert_eq!(parse_reset("2h"), Some(Duration::from_secs(3600)), "capped at an hour");
        assert_eq!(parse_reset("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap_or_else(|_| unreachable!()));
        h.insert("x-ratelimit-reset-requests", "1.5s".parse().unwrap_or_else(|_| unreachable!()));
        h.insert("x-ratelimit-remaining-tokens", "9000".parse().unwrap_or_else(|_| unreachable!()));
        h.insert("x-ratelimit-reset-tokens", "30s".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after_of(&h), Some(Duration::from_millis(1500)), "only the exhausted budget counts");
    }

    #[test]
    fn context_overflow_is_recognised() {
        assert!(looks_like_context_overflow(
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens"}}"#
        ));
        assert!(!looks_like_context_overflow("bad temperature"));
    }

    #[test]
    fn missing_api_key_is_named() {
        let ep = EndpointSettings {
            api_key_env: Some("REASONREC_TEST_SURELY_UNSET_KEY".into()),
            ..EndpointSettings::default()
        };
        let err = TeacherClient::new(&ep).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("REASONREC_TEST_SURELY_UNSET_KEY"), "{err}");
    }
}
