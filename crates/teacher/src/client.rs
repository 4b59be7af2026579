//! A client for one teacher endpoint, in the protocol it speaks (OpenAI chat completions or
//! Anthropic Messages): the HTTP exchange, error classification, the servers' waits and
//! rate-limit headers, and token accounting are shared; only the bodies and headers differ.

use crate::anthropic::{MessagesRequest, MessagesResponse, RATE_LIMIT_KINDS};
use crate::error::TeacherError;
use crate::health::Breaker;
use crate::limits::EndpointLimiter;
use crate::protocol::{ChatCompletionRequest, ChatCompletionResponse, estimate_prompt_tokens, estimate_tokens};
use reasonrec_core::ChatMessage;
use reasonrec_core::settings::{
    EndpointSettings, Protocol, SamplingParams, TeacherSettings, TokenUsage, redact_url, redact_urls_in,
};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::sync::Arc;
use std::time::Duration;

/// An accepted HTTP answer (not yet validated for content).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    pub text: String,
    pub finish_reason: Option<String>,
    /// The whole prompt, cached parts included.
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Of `input_tokens`: read from / written to the server's prompt cache (Anthropic).
    pub cache_read_tokens: u32,
    pub cache_write_tokens: u32,
    /// True when the server sent no `usage` and the counts are estimates.
    pub usage_estimated: bool,
    pub http_status: u16,
    /// The server's `x-ratelimit-remaining-*` reached 0: wait this long before the next request.
    pub pause: Option<Duration>,
}

impl ChatAnswer {
    pub fn usage(&self) -> TokenUsage {
        TokenUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            cache_read: self.cache_read_tokens,
            cache_write: self.cache_write_tokens,
        }
    }
}

#[derive(Clone)]
pub struct TeacherClient {
    http: reqwest::Client,
    endpoint: Arc<EndpointSettings>,
    url: String,
    api_key: Option<Arc<str>>,
    limiter: Arc<EndpointLimiter>,
    breaker: Arc<Breaker>,
    /// The longest pause a server may ask for (`teacher.max_retry_after_secs`).
    max_wait: Duration,
}

impl std::fmt::Debug for TeacherClient {
    // Written by hand so the API key can never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherClient")
            .field("endpoint", &self.endpoint.name)
            .field("url", &redact_url(&self.url))
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
/// whichever rate-limit budget is exhausted.
fn retry_after_of(headers: &HeaderMap, protocol: Protocol) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_millis(ms));
    }
    if let Some(d) = header(headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(v, chrono::Utc::now())) {
        return Some(d);
    }
    exhausted_budget_reset(headers, protocol)
}

/// The reset of an exhausted budget. OpenAI: `x-ratelimit-remaining-{requests,tokens}: 0` ->
/// the matching `x-ratelimit-reset-*` (a duration). Anthropic:
/// `anthropic-ratelimit-{kind}-remaining: 0` -> `anthropic-ratelimit-{kind}-reset` (an RFC 3339
/// time).
fn exhausted_budget_reset(headers: &HeaderMap, protocol: Protocol) -> Option<Duration> {
    if protocol == Protocol::Anthropic {
        return anthropic_reset(headers, chrono::Utc::now());
    }
    ["requests", "tokens"]
        .iter()
        .filter(|kind| {
            header(headers, &format!("x-ratelimit-remaining-{kind}")).and_then(|v| v.parse::<f64>().ok()) == Some(0.0)
        })
        .filter_map(|kind| header(headers, &format!("x-ratelimit-reset-{kind}")).and_then(parse_reset))
        .max()
}

/// Anthropic's budgets are token buckets refilled continuously, and `reset` is when one is full
/// again: with no request left, the next one frees after (reset - now) / limit, not at `reset`.
/// The token budgets are left to our own token buckets and to a 429's `retry-after`: their
/// `remaining` is rounded to thousands, so "0" does not mean empty.
fn anthropic_reset(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let kind = RATE_LIMIT_KINDS[0];
    let remaining =
        header(headers, &format!("anthropic-ratelimit-{kind}-remaining")).and_then(|v| v.parse::<f64>().ok());
    if remaining != Some(0.0) {
        return None;
    }
    let reset = header(headers, &format!("anthropic-ratelimit-{kind}-reset"))
        .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())?;
    let full = (reset.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO);
    let limit = header(headers, &format!("anthropic-ratelimit-{kind}-limit")).and_then(|v| v.parse::<u32>().ok());
    let one = match limit {
        Some(l) if l > 0 => full / l,
        _ => full,
    };
    Some(one.min(Duration::from_secs(3600)))
}

/// The start of a body for an error message: NUL (which Postgres refuses in text) becomes
/// U+FFFD and URLs are redacted, so the message can be logged and stored as it is.
fn snippet(body: &str) -> String {
    let mut s: String = body.chars().take(300).map(|c| if c == '\0' { '\u{FFFD}' } else { c }).collect();
    if body.chars().nth(300).is_some() {
        s.push('…');
    }
    redact_urls_in(&s)
}

/// Redirects are followed only within the endpoint's origin (scheme, host and port), at most
/// five: a 307/308 to another host would re-send the prompt and the key there.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
        if same && attempt.previous().len() <= 5 { attempt.follow() } else { attempt.stop() }
    })
}

/// Reads a body of at most `limit` bytes; a longer one is dropped unread past the limit.
async fn read_capped(mut resp: reqwest::Response, limit: u64, timeout: Duration) -> Result<String, TeacherError> {
    let status = resp.status().as_u16();
    let too_large = || TeacherError::TooLarge { status, what: "response body", limit, billed: None };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify_transport(e, timeout))? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    // Valid UTF-8 (every well-behaved answer) is taken as it is; only a broken body is copied.
    Ok(String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
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
        if api_key.is_some() {
            let url = reqwest::Url::parse(&endpoint.base_url)
                .map_err(|e| TeacherError::Connect(format!("base_url of endpoint {}: {e}", endpoint.name)))?;
            if url.scheme() != "https" && !reasonrec_core::net::is_loopback_host(url.host_str().unwrap_or("")) {
                return Err(TeacherError::InsecureKey { endpoint: endpoint.name.clone() });
            }
        }
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(same_origin_redirects())
            .connect_timeout(Duration::from_secs(endpoint.connect_timeout_secs))
            .timeout(Duration::from_secs(endpoint.timeout_secs))
            .pool_max_idle_per_host(endpoint.max_in_flight.max(1))
            .build()
            .map_err(|e| TeacherError::Connect(e.to_string()))?;
        Ok(Self {
            http,
            url: format!(
                "{}/{}",
                endpoint.base_url.trim_end_matches('/'),
                match endpoint.protocol {
                    Protocol::OpenAi => "chat/completions",
                    Protocol::Anthropic => "messages",
                }
            ),
            endpoint: Arc::new(endpoint.clone()),
            api_key,
            limiter: Arc::new(EndpointLimiter::new(endpoint)),
            breaker: Arc::new(Breaker::new(5, Duration::from_secs(5))),
            max_wait: Duration::from_secs(TeacherSettings::default().max_retry_after_secs),
        })
    }

    /// Replaces the longest pause a server may ask for (from `teacher.max_retry_after_secs`).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
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

    pub fn cost_usd(&self, usage: &TokenUsage) -> f64 {
        self.endpoint.cost_usd(usage)
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
            // An unusable 2xx answer counted what it was billed.
            Err(e) => match e.billed() {
                Some(u) => self.limiter.settle(admission, u.input, u.output),
                None => self.limiter.settle(admission, estimate_prompt_tokens(messages), 0),
            },
        }
        if let Some(p) = result.as_ref().ok().and_then(|a| a.pause) {
            self.limiter.pause_for(p);
        }
        result
    }

    /// The request in the endpoint's protocol, with its credentials.
    fn request(&self, messages: &[ChatMessage], params: &SamplingParams) -> reqwest::RequestBuilder {
        self.authorized(self.http.post(&self.url).json(&self.body(messages, params)))
    }

    /// The body of one request in the endpoint's protocol: what a live call sends, and what a
    /// batch line carries (`batch`).
    pub(crate) fn body(&self, messages: &[ChatMessage], params: &SamplingParams) -> serde_json::Value {
        let ep = &self.endpoint;
        let body = match ep.protocol {
            Protocol::OpenAi => serde_json::to_value(ChatCompletionRequest {
                model: ep.model.clone(),
                messages: messages.to_vec(),
                temperature: Some(params.temperature),
                top_p: params.top_p,
                max_tokens: Some(params.max_tokens),
                stop: params.stop.clone(),
            }),
            Protocol::Anthropic => serde_json::to_value(MessagesRequest {
                temperature: Some(params.temperature),
                top_p: params.top_p,
                stop_sequences: params.stop.clone(),
                ..MessagesRequest::from_chat(&ep.model, messages, params.max_tokens)
            }),
        };
        // Plain structs of strings and numbers: serialising them cannot fail.
        body.unwrap_or_default()
    }

    /// `req` with the endpoint's credentials (and Anthropic's version header).
    pub(crate) fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.endpoint.protocol {
            Protocol::OpenAi => match &self.api_key {
                Some(key) => req.bearer_auth(key),
                None => req,
            },
            Protocol::Anthropic => {
                let req = req.header("anthropic-version", &self.endpoint.anthropic_version);
                // Marked sensitive, as `bearer_auth` marks its header: never printed by Debug.
                match self.api_key.as_deref().map(reqwest::header::HeaderValue::from_str) {
                    Some(Ok(mut key)) => {
                        key.set_sensitive(true);
                        req.header("x-api-key", key)
                    }
                    // A key that is no valid header value: sent as reqwest builds it (it fails
                    // the request, which then says so).
                    Some(Err(_)) => req.header("x-api-key", self.api_key.as_deref().unwrap_or_default()),
                    None => req,
                }
            }
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The HTTP exchange alone.
    async fn send(&self, messages: &[ChatMessage], params: &SamplingParams) -> Result<ChatAnswer, TeacherError> {
        let req = self.request(messages, params);
        let timeout = Duration::from_secs(self.endpoint.timeout_secs);
        let resp = req.send().await.map_err(|e| classify_transport(e, timeout))?;
        let status = resp.status().as_u16();
        // Every form of "wait" a server sends is cut to `max_wait`.
        let protocol = self.endpoint.protocol;
        let retry_after = retry_after_of(resp.headers(), protocol).map(|d| d.min(self.max_wait));
        let pause = exhausted_budget_reset(resp.headers(), protocol).map(|d| d.min(self.max_wait));
        let least = TokenUsage { input: estimate_prompt_tokens(messages), ..TokenUsage::default() };
        let text = read_capped(resp, self.endpoint.max_response_bytes, timeout)
            .await
            .map_err(|e| if (200..=299).contains(&status) { e.billed_at(least) } else { e })?;
        match status {
            200..=299 => {
                self.parse_answer(status, &text, estimate_prompt_tokens(messages)).map(|a| ChatAnswer { pause, ..a })
            }
            _ => Err(self.refusal(status, retry_after, &text)),
        }
    }

    /// Sends `req` (already authorized) and reads its body up to `limit` bytes: `(status, body)`
    /// of a 2xx, the endpoint's error class otherwise. No retry: the batch API's calls.
    pub(crate) async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        limit: u64,
    ) -> Result<(u16, String), TeacherError> {
        let resp = self.open(req, limit).await?;
        let status = resp.status().as_u16();
        let timeout = Duration::from_secs(self.endpoint.timeout_secs);
        Ok((status, read_capped(resp, limit, timeout).await?))
    }

    /// Sends `req` (already authorized): a 2xx response with its body still to read (a batch's
    /// results, read as they come), the endpoint's error class otherwise (its body read up to
    /// `limit` bytes).
    pub(crate) async fn open(
        &self,
        req: reqwest::RequestBuilder,
        limit: u64,
    ) -> Result<reqwest::Response, TeacherError> {
        let timeout = Duration::from_secs(self.endpoint.timeout_secs);
        let resp = req.send().await.map_err(|e| classify_transport(e, timeout))?;
        let status = resp.status().as_u16();
        if (200..=299).contains(&status) {
            return Ok(resp);
        }
        let retry_after = retry_after_of(resp.headers(), self.endpoint.protocol).map(|d| d.min(self.max_wait));
        let text = read_capped(resp, limit, timeout).await?;
        Err(self.refusal(status, retry_after, &text))
    }

    /// The next piece of a body being read, as [`Self::open`] returned it (`None` at its end).
    pub(crate) async fn chunk(&self, resp: &mut reqwest::Response) -> Result<Option<bytes::Bytes>, TeacherError> {
        let timeout = Duration::from_secs(self.endpoint.timeout_secs);
        resp.chunk().await.map_err(|e| classify_transport(e, timeout))
    }

    /// What a non-2xx answer of this endpoint means (live calls and batch calls alike).
    pub(crate) fn refusal(&self, status: u16, retry_after: Option<Duration>, text: &str) -> TeacherError {
        let protocol = self.endpoint.protocol;
        let timeout = Duration::from_secs(self.endpoint.timeout_secs);
        match status {
            300..=399 => TeacherError::Redirect { status },
            // Anthropic's 529 (overloaded, API-wide) is a server error like any 5xx: retried,
            // counted by the breaker, and it does not shrink this endpoint's rate limit.
            // Anthropic sends retry-after with every rate limit but a spend limit's.
            429 if protocol == Protocol::Anthropic && retry_after.is_none() => TeacherError::SpendLimit { status },
            // OpenAI's quota exhausted: also a 429, named in the body.
            429 if text.contains("insufficient_quota") => TeacherError::SpendLimit { status },
            429 => TeacherError::RateLimited { status, retry_after },
            401 | 403 => TeacherError::Auth { status },
            408 => TeacherError::Timeout(timeout),
            400 | 413 | 422 if looks_like_context_overflow(text) => {
                TeacherError::ContextTooLong { status, body: snippet(text) }
            }
            500..=599 => TeacherError::Server { status, body: snippet(text) },
            _ => TeacherError::BadRequest { status, body: snippet(text) },
        }
    }

    /// A 2xx body in the endpoint's protocol: (text, finish reason in OpenAI's words, usage).
    fn decode(status: u16, protocol: Protocol, body: &str) -> Result<Decoded, TeacherError> {
        let malformed = |message: String| TeacherError::Malformed { status, message, billed: None };
        match protocol {
            Protocol::OpenAi => {
                let parsed: ChatCompletionResponse =
                    serde_json::from_str(body).map_err(|e| malformed(format!("{e}: {}", snippet(body))))?;
                let Some(choice) = parsed.choices.into_iter().next() else {
                    return Err(malformed("no choices in the answer".into()));
                };
                let Some(text) = choice.message.content else {
                    return Err(malformed("the first choice has no text content".into()));
                };
                Ok(Decoded { text, finish_reason: choice.finish_reason, usage: parsed.usage.map(|u| u.tokens()) })
            }
            Protocol::Anthropic => {
                let parsed: MessagesResponse =
                    serde_json::from_str(body).map_err(|e| malformed(format!("{e}: {}", snippet(body))))?;
                let finish_reason = parsed.finish_reason();
                // A refusal or a cut-off may come without any text: that is an answer for the
                // validator to reject (and re-ask), not a broken body to retry and count against
                // the endpoint's health.
                let text = match (parsed.text(), finish_reason.as_deref()) {
                    (Some(text), _) => text,
                    (None, Some("refusal" | "length")) => String::new(),
                    (None, _) => return Err(malformed("the answer has no text block".into())),
                };
                Ok(Decoded { text, finish_reason, usage: parsed.usage.map(|u| u.tokens()) })
            }
        }
    }

    /// The usage to record: `reported` when it is plausible next to `estimate`, else the
    /// estimate (`true`: estimated). A broken server's counts would stall the token buckets,
    /// overflow the ledger's columns and skew the budget: an implausible one is counted.
    fn believed(&self, reported: Option<TokenUsage>, estimate: TokenUsage) -> (TokenUsage, bool) {
        match reported {
            Some(u) if plausible(u.input, estimate.input) && plausible(u.output, estimate.output) => (u, false),
            Some(u) => {
                tracing::warn!(endpoint = %self.endpoint().name, reported_in = u.input, reported_out = u.output,
                               estimate_in = estimate.input, estimate_out = estimate.output, "implausible token usage; using estimates");
                reasonrec_core::metrics::metrics()
                    .teacher_usage_anomalies
                    .get_or_create(&vec![("endpoint", self.endpoint().name.clone())])
                    .inc();
                (estimate, true)
            }
            None => (estimate, true),
        }
    }

    /// The usage a 2xx body reports although the rest of it does not decode (no choices, no
    /// text); None when even that is missing or not JSON.
    fn reported_usage(protocol: Protocol, body: &str) -> Option<TokenUsage> {
        #[derive(serde::Deserialize)]
        struct UsageOnly<U> {
            usage: Option<U>,
        }
        match protocol {
            Protocol::OpenAi => {
                serde_json::from_str::<UsageOnly<crate::protocol::Usage>>(body).ok()?.usage.map(|u| u.tokens())
            }
            Protocol::Anthropic => {
                serde_json::from_str::<UsageOnly<crate::anthropic::MessagesUsage>>(body).ok()?.usage.map(|u| u.tokens())
            }
        }
    }

    /// A 2xx answer body checked as every answer is (NUL, length, plausible usage);
    /// `prompt_estimate` is the prompt's estimated tokens.
    pub(crate) fn parse_answer(
        &self,
        status: u16,
        body: &str,
        prompt_estimate: u32,
    ) -> Result<ChatAnswer, TeacherError> {
        // A 2xx answer is billed even when we cannot use it: what its body reports (when
        // plausible), else at least the prompt (a body that does not parse: no output known).
        let least = TokenUsage { input: prompt_estimate, ..TokenUsage::default() };
        let Decoded { text, finish_reason, usage } = Self::decode(status, self.endpoint.protocol, body)
            .map_err(|e| e.billed_at(self.believed(Self::reported_usage(self.endpoint.protocol, body), least).0))?;
        let completion_estimate = estimate_tokens(&text);
        let estimate = TokenUsage { input: prompt_estimate, output: completion_estimate, ..TokenUsage::default() };
        let (usage, usage_estimated) = self.believed(usage, estimate);
        let billed = Some(usage);
        if text.contains('\0') {
            let message = "the answer holds NUL characters (U+0000), which cannot be stored".into();
            return Err(TeacherError::Malformed { status, message, billed });
        }
        let limit = self.endpoint.max_answer_chars;
        if text.chars().nth(limit as usize).is_some() {
            return Err(TeacherError::TooLarge {
                status,
                what: "answer (characters)",
                limit: u64::from(limit),
                billed,
            });
        }
        let finish_reason = finish_reason.map(|r| r.replace('\0', ""));
        Ok(ChatAnswer {
            text,
            finish_reason,
            input_tokens: usage.input,
            output_tokens: usage.output,
            cache_read_tokens: usage.cache_read,
            cache_write_tokens: usage.cache_write,
            usage_estimated,
            http_status: status,
            pause: None,
        })
    }
}

/// A 2xx body's content, whatever the protocol.
struct Decoded {
    text: String,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
}

/// A reported token count is believed unless it is far beyond the text it counts: more than 8x
/// the 4-characters-per-token estimate plus 4,096 (tokenizers differ, never by that much).
fn plausible(reported: u32, estimate: u32) -> bool {
    u64::from(reported) <= u64::from(estimate) * 8 + 4_096
}

fn looks_like_context_overflow(body: &str) -> bool {
    let b = body.to_lowercase();
    [
        "context length",
        "context_length",
        "maximum context",
        "too many tokens",
        "prompt is too long",
        "context window",
        "exceed context limit",
    ]
    .iter()
    .any(|p| b.contains(p))
}

/// A transport error as one of ours. reqwest's message names the URL: it is left out (the
/// endpoint's name travels with every attempt), so no credential in a URL reaches a log or a row.
fn classify_transport(e: reqwest::Error, timeout: Duration) -> TeacherError {
    use std::error::Error as _;
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let message = redact_urls_in(&message);
    if e.is_timeout() {
        TeacherError::Timeout(timeout)
    } else if e.is_decode() || e.is_body() {
        TeacherError::Malformed { status: 0, message, billed: None }
    } else {
        TeacherError::Connect(message)
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
        assert_eq!(
            retry_after_of(&h, Protocol::OpenAi),
            Some(Duration::from_millis(1500)),
            "only the exhausted budget counts"
        );
    }

    #[test]
    fn anthropic_rate_limit_resets_are_times() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).single().unwrap_or_default();
        let mut h = HeaderMap::new();
        fn set(h: &mut HeaderMap, k: &'static str, v: &str) {
            if let Ok(v) = v.parse() {
                h.insert(k, v);
            }
        }
        set(&mut h, "anthropic-ratelimit-input-tokens-remaining", "0");
        set(&mut h, "anthropic-ratelimit-input-tokens-reset", "2026-11-26T12:00:07.500Z");
        set(&mut h, "anthropic-ratelimit-requests-remaining", "12");
        set(&mut h, "anthropic-ratelimit-requests-reset", "2026-11-26T12:00:30Z");
        assert_eq!(anthropic_reset(&h, now), None, "token budgets (rounded to thousands) do not pause");
        set(&mut h, "anthropic-ratelimit-requests-remaining", "0");
        assert_eq!(anthropic_reset(&h, now), Some(Duration::from_secs(30)), "no limit known: until the reset");
        set(&mut h, "anthropic-ratelimit-requests-limit", "60");
        assert_eq!(anthropic_reset(&h, now), Some(Duration::from_millis(500)), "one request's share of the refill");
        set(&mut h, "anthropic-ratelimit-requests-reset", "2026-11-26T11:59:00Z");
        assert_eq!(anthropic_reset(&h, now), Some(Duration::ZERO), "a reset in the past is no wait");
        set(&mut h, "anthropic-ratelimit-requests-reset", "soon");
        assert_eq!(anthropic_reset(&h, now), None);
    }

    #[test]
    fn an_anthropic_refusal_without_text_is_an_answer_to_reject_not_a_broken_body() {
        let refusal =
            r#"{"type":"message","content":[],"stop_reason":"refusal","usage":{"input_tokens":9,"output_tokens":0}}"#;
        let d = TeacherClient::decode(200, Protocol::Anthropic, refusal);
        assert!(matches!(&d, Ok(d) if d.text.is_empty() && d.finish_reason.as_deref() == Some("refusal")));
        let cut = r#"{"content":[{"type":"thinking","thinking":"x"}],"stop_reason":"max_tokens"}"#;
        let d = TeacherClient::decode(200, Protocol::Anthropic, cut);
        assert!(matches!(&d, Ok(d) if d.text.is_empty() && d.finish_reason.as_deref() == Some("length")));
        let odd = r#"{"content":[],"stop_reason":"end_turn"}"#;
        assert!(matches!(TeacherClient::decode(200, Protocol::Anthropic, odd), Err(TeacherError::Malformed { .. })));
        let reason = reasonrec_core::validate::validate_answer(
            reasonrec_core::stage::Stage::Reasoning,
            "",
            Some("refusal"),
            None,
        );
        assert_eq!(reason.err().map(|r| r.code), Some("refusal"), "the validator says why, not just 'empty'");
    }

    #[test]
    fn a_2xx_answer_we_cannot_use_is_billed_as_reported_or_at_least_its_prompt() -> Result<(), TeacherError> {
        for protocol in [Protocol::OpenAi, Protocol::Anthropic] {
            let c = TeacherClient::new(&EndpointSettings {
                protocol,
                max_answer_chars: 10,
                ..EndpointSettings::default()
            })?;
            let billed = |body: &str| c.parse_answer(200, body, 40).err().and_then(|e| e.billed());
            let (no_text, nul, long) = match protocol {
                Protocol::OpenAi => (
                    r#"{"choices":[],"usage":{"prompt_tokens":37,"completion_tokens":5}}"#,
                    r#"{"choices":[{"message":{"content":"a\u0000b"}}],"usage":{"prompt_tokens":37,"completion_tokens":5}}"#,
                    r#"{"choices":[{"message":{"content":"far more than ten"}}],"usage":{"prompt_tokens":37,"completion_tokens":5}}"#,
                ),
                Protocol::Anthropic => (
                    r#"{"content":[],"stop_reason":"end_turn","usage":{"input_tokens":37,"output_tokens":5}}"#,
                    r#"{"content":[{"type":"text","text":"a\u0000b"}],"usage":{"input_tokens":37,"output_tokens":5}}"#,
                    r#"{"content":[{"type":"text","text":"far more than ten"}],"usage":{"input_tokens":37,"output_tokens":5}}"#,
                ),
            };
            let reported = Some(TokenUsage { input: 37, output: 5, ..TokenUsage::default() });
            assert_eq!(billed(no_text), reported, "{protocol}: usage beside an answer with no text");
            assert_eq!(billed(nul), reported, "{protocol}: NUL answer");
            assert_eq!(billed(long), reported, "{protocol}: answer over the cap");
            let least = Some(TokenUsage { input: 40, ..TokenUsage::default() });
            assert_eq!(billed(r#"{"choices":[{"message":{"content":"trunc"#), least, "{protocol}: cut off: the prompt");
            assert_eq!(c.refusal(500, None, "oops").billed(), None, "{protocol}: a failed request is not billed");
            let absurd = match protocol {
                Protocol::OpenAi => r#"{"choices":[],"usage":{"prompt_tokens":4294967295,"completion_tokens":5}}"#,
                Protocol::Anthropic => {
                    r#"{"content":[],"stop_reason":"end_turn","usage":{"input_tokens":4294967295,"output_tokens":5}}"#
                }
            };
            assert_eq!(billed(absurd), least, "{protocol}: an implausible count is not believed");
        }
        Ok(())
    }

    #[test]
    fn context_overflow_is_recognised() {
        assert!(looks_like_context_overflow(
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens"}}"#
        ));
        assert!(looks_like_context_overflow(
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000"}}"#
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
