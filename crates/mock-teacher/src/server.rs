//! Routes and the handle that starts, inspects and stops the mock.

use crate::MockError;
use crate::answer::{Kind, answer_with, parse};
use crate::config::{MockConfig, RetryAfterFormat};
use crate::limits::Window;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use reasonrec_core::ChatMessage;
use reasonrec_teacher::anthropic::{ContentBlock, MessagesRequest, MessagesResponse, MessagesUsage};
use reasonrec_teacher::protocol::{
    AssistantMessage, ChatCompletionRequest, ChatCompletionResponse, Choice, Usage, estimate_prompt_tokens,
    estimate_tokens,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What the mock served since start (or the last reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MockStats {
    pub requests: u64,
    /// Answered 200 with a well-formed completion.
    pub ok: u64,
    /// Refused because the mock's own requests/min or tokens/min limit was reached.
    pub over_limit: u64,
    pub injected_429: u64,
    pub injected_5xx: u64,
    pub hangs: u64,
    pub malformed: u64,
    pub huge_bodies: u64,
    pub nul_answers: u64,
    pub redirects: u64,
    /// Reasoning answers that argued the opposite of the stated outcome (`rate_contradict`).
    pub contradictions: u64,
    pub bad_requests: u64,
    /// Refused for a missing or wrong API key.
    pub unauthorized: u64,
    /// Requests per protocol (`openai`, `anthropic`).
    pub by_protocol: BTreeMap<String, u64>,
    /// Anthropic requests that carried a `system` field.
    pub system_fields: u64,
    /// Refused with 400 for not fitting `context_tokens`.
    pub context_overflows: u64,
    /// Tokens of `ok` answers.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `ok` answers per prompt kind (reasoning_like, reasoning_dislike, item_profile, ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Milliseconds since the mock started of the first and last `ok` answer.
    pub first_ok_ms: Option<u64>,
    pub last_ok_ms: Option<u64>,
}

struct AppState {
    config: RwLock<MockConfig>,
    stats: Mutex<MockStats>,
    window: Mutex<Window>,
    rng: Mutex<rand::rngs::StdRng>,
    started: Instant,
    /// The messages of the last `record_requests` requests, oldest first.
    recorded: Mutex<std::collections::VecDeque<Vec<ChatMessage>>>,
}

impl AppState {
    fn stats(&self, f: impl FnOnce(&mut MockStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }
    fn config(&self) -> MockConfig {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }
    fn recorded(&self) -> Vec<Vec<ChatMessage>> {
        self.recorded.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }
}

/// A running mock teacher. Dropping it stops the server (hanging requests are cut).
pub struct MockHandle {
    pub addr: SocketAddr,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl MockHandle {
    /// Base URL for an endpoint setting, ending in `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> MockStats {
        self.state.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The messages of the last `record_requests` requests (both protocols; Anthropic's system
    /// field as the first message), oldest first.
    pub fn recorded(&self) -> Vec<Vec<ChatMessage>> {
        self.state.recorded()
    }

    pub fn reset_stats(&self) {
        self.state.stats(|s| *s = MockStats::default());
    }

    pub fn config(&self) -> MockConfig {
        self.state.config()
    }

    pub fn set_config(&self, config: MockConfig) -> Result<(), String> {
        config.validate()?;
        apply_config(&self.state, config);
        Ok(())
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn apply_config(state: &AppState, config: MockConfig) {
    if let Ok(mut rng) = state.rng.lock() {
        *rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    }
    if let Ok(mut c) = state.config.write() {
        *c = config;
    }
}

/// Binds `addr` (port 0 picks a free one) and serves in a background task.
pub async fn spawn(addr: SocketAddr, config: MockConfig) -> Result<MockHandle, MockError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MockError::Bind { addr: addr.to_string(), source })?;
    let addr = listener.local_addr().map_err(|source| MockError::Bind { addr: addr.to_string(), source })?;
    let state = Arc::new(AppState {
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)),
        config: RwLock::new(config),
        stats: Mutex::new(MockStats::default()),
        window: Mutex::new(Window::default()),
        started: Instant::now(),
        recorded: Mutex::new(std::collections::VecDeque::new()),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route("/stats", get(get_stats))
        .route("/requests", get(get_recorded))
        .route("/stats/reset", post(reset_stats))
        .route("/config", get(get_config).put(put_config))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "mock teacher stopped");
        }
    });
    tracing::info!(%addr, "mock teacher listening");
    Ok(MockHandle { addr, state, task })
}

/// Which protocol a request came in: errors, bodies and headers are answered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
        }
    }

    /// The path a redirect points to on another server.
    fn path(self) -> &'static str {
        match self {
            Wire::OpenAi => "chat/completions",
            Wire::Anthropic => "messages",
        }
    }

    /// An error body: OpenAI's `{"error":{message,type,code}}` (`kind` is its type) or
    /// Anthropic's envelope, whose type follows from the status.
    fn error(self, status: StatusCode, kind: &str, message: &str) -> Response {
        match self {
            Wire::OpenAi => error_json(status, kind, message),
            Wire::Anthropic => {
                let kind = match status.as_u16() {
                    400 | 413 | 422 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    429 => "rate_limit_error",
                    504 => "timeout_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                };
                let request_id = format!("req_{:016x}", rand::random::<u64>());
                let body = reasonrec_teacher::anthropic::error_body(kind, message, &request_id);
                let mut resp = (status, axum::Json(body)).into_response();
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert("request-id", v);
                }
                resp
            }
        }
    }
}

fn error_json(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

fn too_many(wire: Wire, wait: Duration, format: RetryAfterFormat, message: &str) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let value = match format {
        RetryAfterFormat::Seconds => secs.to_string(),
        RetryAfterFormat::HttpDate => (chrono::Utc::now() + chrono::Duration::seconds(secs as i64))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
        RetryAfterFormat::Milliseconds => (secs * 1000).to_string(),
    };
    let name = match format {
        RetryAfterFormat::Milliseconds => header::HeaderName::from_static("retry-after-ms"),
        _ => header::RETRY_AFTER,
    };
    let mut resp = wire.error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", message);
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

/// Cuts `text` to at most `max_tokens` estimated tokens; returns whether it was cut.
fn fit(text: String, max_tokens: Option<u32>) -> (String, bool) {
    let Some(max) = max_tokens else {
        return (text, false);
    };
    if estimate_tokens(&text) <= max {
        return (text, false);
    }
    let cut: String = text.chars().take(max as usize * 4).collect();
    (cut, true)
}

/// A request in either protocol, as the mock answers it.
struct Asked {
    model: String,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u32>,
}

/// The credentials and body of a request in `wire`'s protocol, or the error to answer.
fn admit_request(
    state: &AppState,
    wire: Wire,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Asked, Box<Response>> {
    let sent = match wire {
        Wire::OpenAi => {
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
        }
        Wire::Anthropic => headers.get("x-api-key").and_then(|v| v.to_str().ok()),
    };
    if let Some(key) = state.config().api_key
        && sent != Some(key.as_str())
    {
        state.stats(|s| s.unauthorized += 1);
        return Err(Box::new(wire.error(StatusCode::UNAUTHORIZED, "invalid_api_key", "Incorrect API key provided")));
    }
    let bad = |message: String| {
        state.stats(|s| s.bad_requests += 1);
        Box::new(wire.error(StatusCode::BAD_REQUEST, "invalid_request_error", &message))
    };
    let asked = match wire {
        Wire::OpenAi => {
            let req: ChatCompletionRequest =
                serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))?;
            Asked { model: req.model, messages: req.messages, max_tokens: req.max_tokens }
        }
        Wire::Anthropic => {
            if headers.get("anthropic-version").is_none() {
                return Err(bad("anthropic-version: header is required".into()));
            }
            let req: MessagesRequest = serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))?;
            if req.messages.iter().any(|t| t.role != "user" && t.role != "assistant") {
                return Err(bad("messages: roles must be user or assistant; use the system field".into()));
            }
            if req.messages.first().is_none_or(|t| t.role != "user") {
                return Err(bad("messages: the first message must use the user role".into()));
            }
            if req.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
                return Err(bad("temperature: must be within [0, 1]".into()));
            }
            if req.system.is_some() {
                state.stats(|s| s.system_fields += 1);
            }
            Asked { model: req.model.clone(), messages: req.to_chat(), max_tokens: Some(req.max_tokens) }
        }
    };
    if asked.messages.is_empty() {
        return Err(bad("messages must not be empty".into()));
    }
    Ok(asked)
}

async fn chat(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    serve(&state, Wire::OpenAi, &headers, &body).await
}

async fn messages(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    serve(&state, Wire::Anthropic, &headers, &body).await
}

/// One request in either protocol: its credentials, the mock's own limit, one fault draw, then
/// the answer.
async fn serve(state: &AppState, wire: Wire, headers: &axum::http::HeaderMap, body: &[u8]) -> Response {
    state.stats(|s| {
        s.requests += 1;
        *s.by_protocol.entry(wire.name().to_string()).or_default() += 1;
    });
    let req = match admit_request(state, wire, headers, body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let cfg = state.config();
    if cfg.record_requests > 0
        && let Ok(mut recorded) = state.recorded.lock()
    {
        while recorded.len() >= cfg.record_requests {
            recorded.pop_front();
        }
        recorded.push_back(req.messages.clone());
    }
    let prompt: String = req.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
    let (draw, jitter) = match state.rng.lock() {
        Ok(mut rng) => {
            let d: f64 = rng.random();
            let j = if cfg.latency_jitter_ms > 0 { rng.random_range(0..=cfg.latency_jitter_ms) } else { 0 };
            (d, j)
        }
        Err(_) => (1.0, 0),
    };
    let faults = cfg.fault_rate();
    let contradict = draw >= faults && draw < faults + cfg.rate_contradict;
    let (text, truncated) = fit(answer_with(&prompt, contradict), req.max_tokens);
    let prompt_tokens = estimate_prompt_tokens(&req.messages);
    let completion_tokens = estimate_tokens(&text);
    let wanted = prompt_tokens.saturating_add(req.max_tokens.unwrap_or(0));
    if cfg.context_tokens > 0 && wanted > cfg.context_tokens {
        state.stats(|s| s.context_overflows += 1);
        let message = match wire {
            Wire::OpenAi => format!(
                "This model's maximum context length is {} tokens. However, you requested {wanted} tokens \
                 ({prompt_tokens} in the messages, {} in the completion).",
                cfg.context_tokens,
                req.max_tokens.unwrap_or(0)
            ),
            Wire::Anthropic => format!("prompt is too long: {wanted} tokens > {} maximum", cfg.context_tokens),
        };
        return wire.error(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
    }

    let admitted = match state.window.lock() {
        Ok(mut w) => w
            .admit(
                Instant::now(),
                u64::from(prompt_tokens + completion_tokens),
                cfg.requests_per_minute,
                cfg.tokens_per_minute,
            )
            .map(|()| w.requests_left(cfg.requests_per_minute, Instant::now())),
        Err(_) => Ok(None),
    };
    let requests_left = match admitted {
        Ok(left) => left,
        Err(wait) => {
            state.stats(|s| s.over_limit += 1);
            let mut resp = too_many(wire, wait, RetryAfterFormat::Seconds, "rate limit of the mock teacher reached");
            if wire == Wire::Anthropic {
                rate_limit_headers(&mut resp, cfg.requests_per_minute, 0, wait);
            }
            return resp;
        }
    };

    if cfg.spend_limit {
        state.stats(|s| s.injected_429 += 1);
        let message = "You have reached your specified API usage limits.";
        return wire.error(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message);
    }
    let latency = Duration::from_millis(cfg.latency_ms + jitter);
    let mut edge = cfg.rate_429;
    if draw < edge {
        state.stats(|s| s.injected_429 += 1);
        return too_many(wire, Duration::from_secs(cfg.retry_after_secs), cfg.retry_after_format, "injected 429");
    }
    edge += cfg.rate_5xx;
    if draw < edge {
        state.stats(|s| s.injected_5xx += 1);
        tokio::time::sleep(latency).await;
        let first_half = draw < edge - cfg.rate_5xx / 2.0;
        return match (wire, first_half) {
            (Wire::OpenAi, true) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "injected failure"),
            (Wire::OpenAi, false) => {
                (StatusCode::BAD_GATEWAY, "<html><body>502 Bad Gateway</body></html>").into_response()
            }
            // Anthropic's API-wide overload, and its plain internal error.
            (Wire::Anthropic, true) => {
                let overloaded = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                wire.error(overloaded, "", "Overloaded")
            }
            (Wire::Anthropic, false) => wire.error(StatusCode::INTERNAL_SERVER_ERROR, "", "injected failure"),
        };
    }
    edge += cfg.rate_hang;
    if draw < edge {
        state.stats(|s| s.hangs += 1);
        tokio::time::sleep(Duration::from_secs(cfg.hang_secs)).await;
        return wire.error(StatusCode::GATEWAY_TIMEOUT, "timeout", "injected hang");
    }
    edge += cfg.rate_malformed;
    tokio::time::sleep(latency).await;
    if draw < edge {
        state.stats(|s| s.malformed += 1);
        let body = match (wire, draw < edge - cfg.rate_malformed / 2.0) {
            (Wire::OpenAi, true) => "{\"id\":\"chatcmpl-x\",\"choices\":[{\"message\":{\"content\":\"trunc",
            (Wire::OpenAi, false) => "{\"id\":\"chatcmpl-x\",\"object\":\"chat.completion\",\"choices\":[]}",
            (Wire::Anthropic, true) => {
                "{\"id\":\"msg_x\",\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"trunc"
            }
            (Wire::Anthropic, false) => {
                "{\"id\":\"msg_x\",\"type\":\"message\",\"content\":[],\"stop_reason\":\"end_turn\"}"
            }
        };
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    edge += cfg.rate_huge_body;
    if draw < edge {
        state.stats(|s| s.huge_bodies += 1);
        return huge_body(cfg.huge_body_bytes);
    }
    edge += cfg.rate_nul;
    let nul = draw < edge;
    if nul && draw < edge - cfg.rate_nul / 2.0 {
        // Half of them an error page with a raw NUL byte, as a broken proxy sends.
        state.stats(|s| s.nul_answers += 1);
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream \0 failed \0").into_response();
    }
    edge += cfg.rate_redirect;
    if !nul
        && draw < edge
        && let Some(to) = &cfg.redirect_to
    {
        state.stats(|s| s.redirects += 1);
        let location = format!("{}/{}", to.trim_end_matches('/'), wire.path());
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response();
    }
    let text = if nul {
        state.stats(|s| s.nul_answers += 1);
        text.replacen(' ', "\0", 3)
    } else {
        text
    };

    let kind = match parse(&prompt).kind {
        Kind::Reasoning { like: true } => "reasoning_like",
        Kind::Reasoning { like: false } => "reasoning_dislike",
        Kind::ItemProfile => "item_profile",
        Kind::UserProfile => "user_profile",
        Kind::Other => "other",
    };
    let elapsed = state.started.elapsed().as_millis() as u64;
    state.stats(|s| {
        s.ok += 1;
        s.contradictions += u64::from(contradict);
        s.prompt_tokens += u64::from(prompt_tokens);
        s.completion_tokens += u64::from(completion_tokens);
        *s.by_kind.entry(kind.to_string()).or_default() += 1;
        s.first_ok_ms.get_or_insert(elapsed);
        s.last_ok_ms = Some(elapsed);
    });
    let (reported_in, reported_out) = match cfg.usage_override {
        Some(n) => (n, n),
        None => (prompt_tokens, completion_tokens),
    };
    let model = if req.model.is_empty() { cfg.model.clone() } else { req.model };
    match wire {
        Wire::OpenAi => axum::Json(ChatCompletionResponse {
            id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
            object: "chat.completion".into(),
            created: chrono::Utc::now().timestamp(),
            model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage { role: "assistant".into(), content: Some(text) },
                finish_reason: Some(if truncated { "length" } else { "stop" }.into()),
            }],
            usage: Some(Usage {
                prompt_tokens: reported_in,
                completion_tokens: reported_out,
                total_tokens: reported_in.saturating_add(reported_out),
            }),
        })
        .into_response(),
        Wire::Anthropic => {
            // `cache_read_tokens` of the prompt are reported as read from the prompt cache;
            // `input_tokens` is the rest, as Anthropic counts.
            let cached = cfg.cache_read_tokens.min(reported_in);
            let resp = MessagesResponse {
                id: format!("msg_{:016x}", rand::random::<u64>()),
                kind: "message".into(),
                role: "assistant".into(),
                model,
                content: vec![ContentBlock { kind: "text".into(), text: Some(text) }],
                stop_reason: Some(if truncated { "max_tokens" } else { "end_turn" }.into()),
                stop_sequence: None,
                usage: Some(MessagesUsage {
                    input_tokens: reported_in - cached,
                    output_tokens: reported_out,
                    cache_creation_input_tokens: Some(0),
                    cache_read_input_tokens: Some(cached),
                }),
            };
            let mut resp = axum::Json(resp).into_response();
            if let Some((left, reset)) = requests_left {
                rate_limit_headers(&mut resp, cfg.requests_per_minute, left, reset);
            }
            resp
        }
    }
}

/// `anthropic-ratelimit-requests-{limit,remaining,reset}` (reset as an RFC 3339 time).
fn rate_limit_headers(resp: &mut Response, limit: u32, remaining: u32, reset_in: Duration) {
    let reset = chrono::Utc::now() + chrono::Duration::milliseconds(reset_in.as_millis() as i64);
    for (name, value) in [
        ("anthropic-ratelimit-requests-limit", limit.to_string()),
        ("anthropic-ratelimit-requests-remaining", remaining.to_string()),
        ("anthropic-ratelimit-requests-reset", reset.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
}

/// A 200 of `bytes` bytes of JSON-looking filler, streamed in 64 KiB chunks without a length.
fn huge_body(bytes: u64) -> Response {
    static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
    let chunks = bytes.div_ceil(CHUNK.len() as u64);
    let stream =
        futures::stream::iter((0..chunks).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(&CHUNK))));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(stream))
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let model = state.config().model;
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{"id": model, "object": "model", "created": 0, "owned_by": "reasonrec"}]
    }))
    .into_response()
}

async fn get_recorded(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.recorded()).into_response()
}

async fn get_stats(State(state): State<Arc<AppState>>) -> Response {
    let s = state.stats.lock().map(|s| s.clone()).unwrap_or_default();
    axum::Json(s).into_response()
}

async fn reset_stats(State(state): State<Arc<AppState>>) -> Response {
    state.stats(|s| *s = MockStats::default());
    StatusCode::NO_CONTENT.into_response()
}

async fn get_config(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.config()).into_response()
}

async fn put_config(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let cfg: MockConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error_json(StatusCode::BAD_REQUEST, "invalid_config", &e.to_string()),
    };
    if let Err(e) = cfg.validate() {
        return error_json(StatusCode::BAD_REQUEST, "invalid_config", &e);
    }
    apply_config(&state, cfg.clone());
    axum::Json(cfg).into_response()
}
