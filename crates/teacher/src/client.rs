//! A client for one teacher endpoint.

use crate::error::TeacherError;
use crate::protocol::{ChatCompletionRequest, ChatCompletionResponse, estimate_prompt_tokens, estimate_tokens};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reasonrec_core::ChatMessage;
use reasonrec_core::settings::{EndpointSettings, SamplingParams};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

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
}

#[derive(Clone)]
pub struct TeacherClient {
    http: reqwest::Client,
    endpoint: Arc<EndpointSettings>,
    url: String,
    api_key: Option<Arc<str>>,
    in_flight: Arc<Semaphore>,
    rpm: Option<Arc<DefaultDirectRateLimiter>>,
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

fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, chrono::Utc::now()))
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
        let rpm = NonZeroU32::new(endpoint.requests_per_minute).and_then(|n| {
            // Smooth: one request every 60/n s with no burst, never a minute's budget at once.
            Quota::with_period(Duration::from_secs(60) / n.get())
                .map(|q| Arc::new(RateLimiter::direct(q.allow_burst(NonZeroU32::MIN))))
        });
        Ok(Self {
            http,
            url: format!("{}/chat/completions", endpoint.base_url.trim_end_matches('/')),
            endpoint: Arc::new(endpoint.clone()),
            api_key,
            in_flight: Arc::new(Semaphore::new(endpoint.max_in_flight.max(1))),
            rpm,
        })
    }

    pub fn endpoint(&self) -> &EndpointSettings {
        &self.endpoint
    }

    pub fn cost_usd(&self, input_tokens: u32, output_tokens: u32) -> f64 {
        (f64::from(input_tokens) * self.endpoint.price_input_per_mtok
            + f64::from(output_tokens) * self.endpoint.price_output_per_mtok)
            / 1e6
    }

    /// One call, no retry. Waits for an in-flight slot and the requests/min limiter first.
    pub async fn chat(&self, messages: &[ChatMessage], params: &SamplingParams) -> Result<ChatAnswer, TeacherError> {
        let _slot = self.in_flight.acquire().await.map_err(|e| TeacherError::Connect(e.to_string()))?;
        if let Some(rpm) = &self.rpm {
            rpm.until_ready().await;
        }
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
        let text = resp.text().await.map_err(|e| classify_transport(&e, timeout))?;
        match status {
            200..=299 => self.parse_answer(status, &text, messages),
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
        let (input_tokens, output_tokens, usage_estimated) = match parsed.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens, false),
            None => (estimate_prompt_tokens(messages), estimate_tokens(&text), true),
        };
        Ok(ChatAnswer {
            text,
            finish_reason: choice.finish_reason,
            input_tokens,
            output_tokens,
            usage_estimated,
            http_status: status,
        })
    }
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
