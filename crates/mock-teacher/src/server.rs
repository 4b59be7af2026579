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
    /// Calls of the Batch APIs (`/v1/files`, `/v1/batches`, `/v1/messages/batches`), both
    /// protocols; they are not counted in `requests`.
    #[serde(default)]
    pub batch_requests: u64,
    /// Files uploaded (`POST /v1/files`).
    #[serde(default)]
    pub batch_files: u64,
    /// Batches the mock created, both protocols, including those whose create response was
    /// lost (`batch_lose_create_response`) and OpenAI batches that then failed validation.
    #[serde(default)]
    pub batches_created: u64,
    /// Create calls that created a batch but answered 500 (`batch_lose_create_response`).
    #[serde(default)]
    pub batch_create_responses_lost: u64,
    /// Batches created (both protocols) holding a `custom_id` that an earlier batch already
    /// held: the same batch submitted twice, since a client's custom ids name its own batch and
    /// line (the chaos scenario's "duplicate batch submissions"). A second copy the client
    /// cancels later still counts: the provider was asked twice.
    #[serde(default)]
    pub batches_repeating_custom_ids: u64,
    /// Lines of those batches whose `custom_id` an earlier batch held.
    #[serde(default)]
    pub batch_lines_repeated: u64,
    /// Create and retrieve calls answered 529 (Anthropic) or 500 (OpenAI) by
    /// `batch_overloaded_rate`.
    #[serde(default)]
    pub batch_overloaded: u64,
    /// OpenAI batches that went `failed` (invalid input file, `token_limit_exceeded`).
    #[serde(default)]
    pub batches_failed: u64,
    /// Cancel calls that cancelled a running batch (a repeated cancel is not counted).
    #[serde(default)]
    pub batches_cancelled: u64,
    /// Lines (OpenAI) or requests (Anthropic) of created batches that passed validation.
    #[serde(default)]
    pub batch_lines: u64,
    /// Outcomes of batch lines, counted when their batch ends: answered (OpenAI output file,
    /// Anthropic `succeeded`), failed (HTTP-level error line, Anthropic `errored`), expired,
    /// cancelled before they ran.
    #[serde(default)]
    pub batch_lines_succeeded: u64,
    #[serde(default)]
    pub batch_lines_errored: u64,
    #[serde(default)]
    pub batch_lines_expired: u64,
    #[serde(default)]
    pub batch_lines_cancelled: u64,
    /// Tokens of the answered batch lines.
    #[serde(default)]
    pub batch_prompt_tokens: u64,
    #[serde(default)]
    pub batch_completion_tokens: u64,
    /// Answered batch lines per prompt kind, as `by_kind`.
    #[serde(default)]
    pub batch_by_kind: BTreeMap<String, u64>,
}

pub(crate) struct AppState {
    config: RwLock<MockConfig>,
    stats: Mutex<MockStats>,
    window: Mutex<Window>,
    /// The seeded source of every fault draw.
    pub(crate) rng: Mutex<rand::rngs::StdRng>,
    started: Instant,
    /// The messages of the last `record_requests` requests, oldest first.
    recorded: Mutex<std::collections::VecDeque<Vec<ChatMessage>>>,
    /// Uploaded files and batches of the Batch APIs.
    pub(crate) batches: Mutex<crate::batch::Store>,
    /// Where the mock listens (results URLs when a request has no `Host`).
    pub(crate) addr: SocketAddr,
}

impl AppState {
    pub(crate) fn stats(&self, f: impl FnOnce(&mut MockStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }
    pub(crate) fn config(&self) -> MockConfig {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }
    /// Counts down `batch_lose_create_response`; true when this create call's response is to be
    /// lost.
    pub(crate) fn take_lost_create(&self) -> bool {
        match self.config.write() {
            Ok(mut c) if c.batch_lose_create_response > 0 => {
                c.batch_lose_create_response -= 1;
                true
            }
            _ => false,
        }
    }
    fn recorded(&self) -> Vec<Vec<ChatMessage>> {
        self.recorded.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }
    /// Keeps `messages` among the last `record_requests` requests (none when 0).
    pub(crate) fn record(&self, record_requests: usize, messages: &[ChatMessage]) {
        if record_requests == 0 {
            return;
        }
        if let Ok(mut recorded) = self.recorded.lock() {
            while recorded.len() >= record_requests {
                recorded.pop_front();
            }
            recorded.push_back(messages.to_vec());
        }
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
        batches: Mutex::new(crate::batch::Store::default()),
        addr,
    });
    let app = Router::new()
        .merge(crate::batch::routes())
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
pub(crate) enum Wire {
    OpenAi,
    Anthropic,
}

impl Wire {
    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) fn error(self, status: StatusCode, kind: &str, message: &str) -> Response {
        match self {
            Wire::OpenAi => error_json(status, kind, message),
            Wire::Anthropic => {
                let kind = match status.as_u16() {
                    400 | 413 | 422 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    409 => "conflict_error",
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
    (status, axum::Json(openai_error_body(status, kind, message))).into_response()
}

/// OpenAI's error body `{"error":{message,type,code}}` (the mock's code is the status).
pub(crate) fn openai_error_body(status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": kind, "code": status.as_u16()}})
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

/// A request in either protocol, as the mock answers it (a live call or a batch line).
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) max_tokens: Option<u32>,
}

impl Asked {
    /// A chat-completions request; the error is the 400's message.
    pub(crate) fn from_openai(req: ChatCompletionRequest) -> Result<Self, String> {
        Self { model: req.model, messages: req.messages, max_tokens: req.max_tokens }.non_empty()
    }

    /// A Messages request, checked as Anthropic checks one; the error is the 400's message.
    pub(crate) fn from_anthropic(req: &MessagesRequest) -> Result<Self, String> {
        if req.messages.iter().any(|t| t.role != "user" && t.role != "assistant") {
            return Err("messages: roles must be user or assistant; use the system field".into());
        }
        if req.messages.first().is_none_or(|t| t.role != "user") {
            return Err("messages: the first message must use the user role".into());
        }
        if req.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err("temperature: must be within [0, 1]".into());
        }
        Self { model: req.model.clone(), messages: req.to_chat(), max_tokens: Some(req.max_tokens) }.non_empty()
    }

    fn non_empty(self) -> Result<Self, String> {
        if self.messages.is_empty() {
            return Err("messages must not be empty".into());
        }
        Ok(self)
    }

    /// The 400's message, in `wire`'s words, when the prompt (estimated) plus `max_tokens` does
    /// not fit `context_tokens`.
    pub(crate) fn context_overflow(&self, cfg: &MockConfig, wire: Wire) -> Option<String> {
        let prompt_tokens = estimate_prompt_tokens(&self.messages);
        let wanted = prompt_tokens.saturating_add(self.max_tokens.unwrap_or(0));
        if cfg.context_tokens == 0 || wanted <= cfg.context_tokens {
            return None;
        }
        Some(match wire {
            Wire::OpenAi => format!(
                "This model's maximum context length is {} tokens. However, you requested {wanted} tokens \
                 ({prompt_tokens} in the messages, {} in the completion).",
                cfg.context_tokens,
                self.max_tokens.unwrap_or(0)
            ),
            Wire::Anthropic => format!("prompt is too long: {wanted} tokens > {} maximum", cfg.context_tokens),
        })
    }
}

/// The mock's answer to one request, the same for a live call and a batch line: the text for the
/// prompt (cut to `max_tokens`), its token counts and kind, and the body in either protocol.
pub(crate) struct Reply {
    pub(crate) text: String,
    truncated: bool,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    /// The prompt's kind as `MockStats::by_kind` counts it.
    pub(crate) kind: &'static str,
}

impl Reply {
    /// With `contradict`, a reasoning answer argues the opposite of the stated outcome.
    pub(crate) fn new(asked: &Asked, contradict: bool) -> Self {
        let prompt: String = asked.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
        let (text, truncated) = fit(answer_with(&prompt, contradict), asked.max_tokens);
        let kind = match parse(&prompt).kind {
            Kind::Reasoning { like: true } => "reasoning_like",
            Kind::Reasoning { like: false } => "reasoning_dislike",
            Kind::ItemProfile => "item_profile",
            Kind::UserProfile => "user_profile",
            Kind::Judge { .. } => "judge",
            Kind::Other => "other",
        };
        let prompt_tokens = estimate_prompt_tokens(&asked.messages);
        let completion_tokens = estimate_tokens(&text);
        Self { text, truncated, prompt_tokens, completion_tokens, kind }
    }

    /// The token counts `usage` reports (`usage_override` replaces both).
    fn reported(&self, cfg: &MockConfig) -> (u32, u32) {
        match cfg.usage_override {
            Some(n) => (n, n),
            None => (self.prompt_tokens, self.completion_tokens),
        }
    }

    fn model(cfg: &MockConfig, asked: &Asked) -> String {
        if asked.model.is_empty() { cfg.model.clone() } else { asked.model.clone() }
    }

    pub(crate) fn openai(self, cfg: &MockConfig, asked: &Asked) -> ChatCompletionResponse {
        let (reported_in, reported_out) = self.reported(cfg);
        ChatCompletionResponse {
            id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
            object: "chat.completion".into(),
            created: chrono::Utc::now().timestamp(),
            model: Self::model(cfg, asked),
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage { role: "assistant".into(), content: Some(self.text) },
                finish_reason: Some(if self.truncated { "length" } else { "stop" }.into()),
            }],
            usage: Some(Usage {
                prompt_tokens: reported_in,
                completion_tokens: reported_out,
                total_tokens: reported_in.saturating_add(reported_out),
            }),
        }
    }

    pub(crate) fn anthropic(self, cfg: &MockConfig, asked: &Asked) -> MessagesResponse {
        let (reported_in, reported_out) = self.reported(cfg);
        // `cache_read_tokens` of the prompt are reported as read from the prompt cache;
        // `input_tokens` is the rest, as Anthropic counts.
        let cached = cfg.cache_read_tokens.min(reported_in);
        MessagesResponse {
            id: format!("msg_{:016x}", rand::random::<u64>()),
            kind: "message".into(),
            role: "assistant".into(),
            model: Self::model(cfg, asked),
            content: vec![ContentBlock { kind: "text".into(), text: Some(self.text) }],
            stop_reason: Some(if self.truncated { "max_tokens" } else { "end_turn" }.into()),
            stop_sequence: None,
            usage: Some(MessagesUsage {
                input_tokens: reported_in - cached,
                output_tokens: reported_out,
                cache_creation_input_tokens: Some(0),
                cache_read_input_tokens: Some(cached),
            }),
        }
    }
}

/// The credentials of a request in `wire`'s protocol (and Anthropic's `anthropic-version`
/// header), or the error to answer.
pub(crate) fn check_credentials(
    state: &AppState,
    wire: Wire,
    headers: &axum::http::HeaderMap,
) -> Result<(), Box<Response>> {
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
    if wire == Wire::Anthropic && headers.get("anthropic-version").is_none() {
        state.stats(|s| s.bad_requests += 1);
        let message = "anthropic-version: header is required";
        return Err(Box::new(wire.error(StatusCode::BAD_REQUEST, "invalid_request_error", message)));
    }
    Ok(())
}

/// The credentials and body of a request in `wire`'s protocol, or the error to answer.
fn admit_request(
    state: &AppState,
    wire: Wire,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Asked, Box<Response>> {
    check_credentials(state, wire, headers)?;
    let bad = |message: String| {
        state.stats(|s| s.bad_requests += 1);
        Box::new(wire.error(StatusCode::BAD_REQUEST, "invalid_request_error", &message))
    };
    match wire {
        Wire::OpenAi => {
            let req: ChatCompletionRequest =
                serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))?;
            Asked::from_openai(req).map_err(bad)
        }
        Wire::Anthropic => {
            let req: MessagesRequest = serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))?;
            let asked = Asked::from_anthropic(&req).map_err(bad)?;
            if req.system.is_some() {
                state.stats(|s| s.system_fields += 1);
            }
            Ok(asked)
        }
    }
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
    state.record(cfg.record_requests, &req.messages);
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
    let mut reply = Reply::new(&req, contradict);
    if let Some(message) = req.context_overflow(&cfg, wire) {
        state.stats(|s| s.context_overflows += 1);
        return wire.error(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
    }

    let requests_left = match rate_limit(state, &cfg, wire, &reply) {
        Ok(left) => left,
        Err(resp) => return *resp,
    };
    let latency = Duration::from_millis(cfg.latency_ms + jitter);
    if let Some(resp) = injected_fault(state, &cfg, wire, draw, latency, &mut reply).await {
        return resp;
    }

    let elapsed = state.started.elapsed().as_millis() as u64;
    state.stats(|s| {
        s.ok += 1;
        s.contradictions += u64::from(contradict);
        s.prompt_tokens += u64::from(reply.prompt_tokens);
        s.completion_tokens += u64::from(reply.completion_tokens);
        *s.by_kind.entry(reply.kind.to_string()).or_default() += 1;
        s.first_ok_ms.get_or_insert(elapsed);
        s.last_ok_ms = Some(elapsed);
    });
    match wire {
        Wire::OpenAi => axum::Json(reply.openai(&cfg, &req)).into_response(),
        Wire::Anthropic => {
            let mut resp = axum::Json(reply.anthropic(&cfg, &req)).into_response();
            if let Some((left, reset)) = requests_left {
                rate_limit_headers(&mut resp, cfg.requests_per_minute, left, reset);
            }
            resp
        }
    }
}

/// The mock's own requests- and tokens-per-minute window: the requests left and when the window
/// resets (Anthropic's headers report them), or the 429 of a request over the limit.
fn rate_limit(
    state: &AppState,
    cfg: &MockConfig,
    wire: Wire,
    reply: &Reply,
) -> Result<Option<(u32, Duration)>, Box<Response>> {
    let admitted = match state.window.lock() {
        Ok(mut w) => w
            .admit(
                Instant::now(),
                u64::from(reply.prompt_tokens + reply.completion_tokens),
                cfg.requests_per_minute,
                cfg.tokens_per_minute,
            )
            .map(|()| w.requests_left(cfg.requests_per_minute, Instant::now())),
        Err(_) => Ok(None),
    };
    match admitted {
        Ok(left) => Ok(left),
        Err(wait) => {
            state.stats(|s| s.over_limit += 1);
            let mut resp = too_many(wire, wait, RetryAfterFormat::Seconds, "rate limit of the mock teacher reached");
            if wire == Wire::Anthropic {
                rate_limit_headers(&mut resp, cfg.requests_per_minute, 0, wait);
            }
            Err(Box::new(resp))
        }
    }
}

/// The faults `cfg` injects, drawn by `draw` (one draw per request, each fault its share of
/// [0, 1)): the response that replaces the answer, or None (a NUL fault may still garble
/// `reply`). Waits the request's latency (a hang waits its own time).
async fn injected_fault(
    state: &AppState,
    cfg: &MockConfig,
    wire: Wire,
    draw: f64,
    latency: Duration,
    reply: &mut Reply,
) -> Option<Response> {
    if cfg.spend_limit {
        state.stats(|s| s.injected_429 += 1);
        let message = "You have reached your specified API usage limits.";
        return Some(wire.error(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message));
    }
    let mut edge = cfg.rate_429;
    if draw < edge {
        state.stats(|s| s.injected_429 += 1);
        return Some(too_many(wire, Duration::from_secs(cfg.retry_after_secs), cfg.retry_after_format, "injected 429"));
    }
    edge += cfg.rate_5xx;
    if draw < edge {
        state.stats(|s| s.injected_5xx += 1);
        tokio::time::sleep(latency).await;
        let first_half = draw < edge - cfg.rate_5xx / 2.0;
        return Some(server_error(wire, first_half));
    }
    edge += cfg.rate_hang;
    if draw < edge {
        state.stats(|s| s.hangs += 1);
        tokio::time::sleep(Duration::from_secs(cfg.hang_secs)).await;
        return Some(wire.error(StatusCode::GATEWAY_TIMEOUT, "timeout", "injected hang"));
    }
    edge += cfg.rate_malformed;
    tokio::time::sleep(latency).await;
    if draw < edge {
        state.stats(|s| s.malformed += 1);
        return Some(malformed(wire, draw < edge - cfg.rate_malformed / 2.0));
    }
    edge += cfg.rate_huge_body;
    if draw < edge {
        state.stats(|s| s.huge_bodies += 1);
        return Some(huge_body(cfg.huge_body_bytes));
    }
    edge += cfg.rate_nul;
    let nul = draw < edge;
    if nul && draw < edge - cfg.rate_nul / 2.0 {
        // Half of them an error page with a raw NUL byte, as a broken proxy sends.
        state.stats(|s| s.nul_answers += 1);
        return Some((StatusCode::INTERNAL_SERVER_ERROR, "upstream \0 failed \0").into_response());
    }
    edge += cfg.rate_redirect;
    if !nul
        && draw < edge
        && let Some(to) = &cfg.redirect_to
    {
        state.stats(|s| s.redirects += 1);
        let location = format!("{}/{}", to.trim_end_matches('/'), wire.path());
        return Some((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response());
    }
    if nul {
        state.stats(|s| s.nul_answers += 1);
        reply.text = reply.text.replacen(' ', "\0", 3);
    }
    None
}

/// An injected server error: half of them the protocol's JSON error (Anthropic's: its API-wide
/// overload), half a bare gateway page (OpenAI) or a plain internal error (Anthropic).
fn server_error(wire: Wire, first_half: bool) -> Response {
    match (wire, first_half) {
        (Wire::OpenAi, true) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "injected failure"),
        (Wire::OpenAi, false) => (StatusCode::BAD_GATEWAY, "<html><body>502 Bad Gateway</body></html>").into_response(),
        (Wire::Anthropic, true) => wire.error(overloaded_status(), "", "Overloaded"),
        (Wire::Anthropic, false) => wire.error(StatusCode::INTERNAL_SERVER_ERROR, "", "injected failure"),
    }
}

/// An injected 200 whose body is no answer: `cut` off mid-way, or complete with no content but
/// its usage (billed all the same).
fn malformed(wire: Wire, cut: bool) -> Response {
    let body = match (wire, cut) {
        (Wire::OpenAi, true) => "{\"id\":\"chatcmpl-x\",\"choices\":[{\"message\":{\"content\":\"trunc",
        // No answer, but usage: billed all the same.
        (Wire::OpenAi, false) => {
            "{\"id\":\"chatcmpl-x\",\"object\":\"chat.completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":0,\"total_tokens\":12}}"
        }
        (Wire::Anthropic, true) => {
            "{\"id\":\"msg_x\",\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"trunc"
        }
        (Wire::Anthropic, false) => {
            "{\"id\":\"msg_x\",\"type\":\"message\",\"content\":[],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":12,\"output_tokens\":0}}"
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Anthropic's 529 (API-wide overload).
pub(crate) fn overloaded_status() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
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
