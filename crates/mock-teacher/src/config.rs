//! Knobs of the mock teacher.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterFormat {
    /// `Retry-After: 2`
    #[default]
    Seconds,
    /// `Retry-After: Thu, 26 Nov 2026 12:00:02 GMT`
    HttpDate,
    /// `retry-after-ms: 2000` (OpenAI's own header)
    Milliseconds,
}

/// Rates are probabilities per request in [0, 1]; one draw decides which fault (if any) a request
/// gets, in the order 429, 5xx, hang, malformed, huge body, NUL answer, redirect, contradicting
/// answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    pub model: String,
    /// Base latency of every answer.
    pub latency_ms: u64,
    /// Uniform extra latency in [0, latency_jitter_ms].
    pub latency_jitter_ms: u64,
    pub rate_429: f64,
    pub retry_after_secs: u64,
    pub retry_after_format: RetryAfterFormat,
    pub rate_5xx: f64,
    /// A hanging request sleeps this long before answering 504 (clients time out first).
    pub rate_hang: f64,
    pub hang_secs: u64,
    pub rate_malformed: f64,
    /// A 200 whose body is `huge_body_bytes` long (sent chunked, without Content-Length).
    pub rate_huge_body: f64,
    pub huge_body_bytes: u64,
    /// NUL characters (U+0000): half a 200 whose answer holds them, half a 500 whose body does.
    pub rate_nul: f64,
    /// A 307 to `redirect_to` + `/chat/completions` (another origin, in the hostile tests).
    pub rate_redirect: f64,
    pub redirect_to: Option<String>,
    /// A well-formed reasoning answer that argues the opposite of the stated outcome. Batch
    /// lines draw it too, each on its own.
    pub rate_contradict: f64,
    /// Own limits over a sliding minute; 0 = none. Requests over them get 429 + Retry-After and
    /// are counted as `over_limit`.
    pub requests_per_minute: u32,
    /// Counts prompt + completion tokens of accepted requests.
    pub tokens_per_minute: u32,
    /// Seed of the fault draws (answers themselves depend only on the prompt).
    pub seed: u64,
    /// When set, requests must carry `Authorization: Bearer <api_key>`; others get 401.
    pub api_key: Option<String>,
    /// A broken server: `usage` reports this many prompt and completion tokens instead of the
    /// real counts (e.g. `u32::MAX`).
    pub usage_override: Option<u32>,
    /// Anthropic answers report this many of the prompt's tokens as read from the prompt cache
    /// (`cache_read_input_tokens`), the rest as `input_tokens`.
    pub cache_read_tokens: u32,
    /// The model's context window: a request whose prompt (estimated at 4 characters a token)
    /// plus `max_tokens` exceeds it is refused with a 400 naming the context length, as vLLM,
    /// llama.cpp and Anthropic do; 0 = no window.
    pub context_tokens: u32,
    /// Keep the messages of the last this many requests (`MockHandle::recorded`,
    /// `GET /requests`), so tests can compare what was sent; 0 = none. Batch lines that ran
    /// are recorded too, in output order, when their batch's results are made.
    pub record_requests: usize,
    /// Every request gets a 429 without `retry-after`, as Anthropic answers once a spend limit
    /// is reached (OpenAI: `insufficient_quota`).
    pub spend_limit: bool,

    // Batch APIs (OpenAI `/v1/files` + `/v1/batches`, Anthropic `/v1/messages/batches`). A batch
    // follows the knobs as they were when it was created (a later PUT /config changes only later
    // batches), and its states follow from the time since its creation, evaluated when it is read.
    /// How long a batch stays `in_progress` (its lines finish evenly spread over this time, in
    /// its shuffled output order; a cancel keeps the lines finished by then); 0 = the batch has
    /// ended (OpenAI: reached `finalizing`) by the first read after its creation.
    pub batch_turnaround_ms: u64,
    /// OpenAI: how long a batch stays `finalizing` after `in_progress` (a large value = "stuck in
    /// finalizing"). Both protocols: how long a cancelled batch stays `cancelling`/`canceling`.
    pub batch_finalizing_ms: u64,
    /// Per line, drawn when the batch is created: an HTTP-level error (OpenAI: a line with
    /// `response.status_code` 500 in the error file; Anthropic: `errored` with `api_error`).
    pub batch_line_error_rate: f64,
    /// Per line, drawn when the batch is created: the line never runs. A batch with such a line
    /// ends at the end of its turnaround as `expired` (OpenAI; the line is `batch_expired` in the
    /// error file) or `ended` with an `expired` result (Anthropic).
    pub batch_expire_rate: f64,
    /// The next this many batch create calls (either protocol) create the batch (it exists, runs
    /// and is listed) but answer 500 (`server_error` / `api_error`), as a response lost after
    /// the work was done; each such call counts this down (GET /config shows what is left).
    pub batch_lose_create_response: u32,
    /// OpenAI: the enqueued prompt tokens (estimated) allowed per model over the batches not
    /// yet ended; a batch that would exceed it goes `failed` with `token_limit_exceeded` at its
    /// first read after creation (the create call itself answers `validating`); 0 = none.
    pub batch_enqueued_token_limit: u64,
    /// Per create or retrieve call of a batch: Anthropic answers 529 `overloaded_error`, OpenAI a
    /// 500 `server_error`; a refused create creates nothing.
    pub batch_overloaded_rate: f64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            model: "mock-teacher".into(),
            latency_ms: 0,
            latency_jitter_ms: 0,
            rate_429: 0.0,
            retry_after_secs: 1,
            retry_after_format: RetryAfterFormat::Seconds,
            rate_5xx: 0.0,
            rate_hang: 0.0,
            hang_secs: 600,
            rate_malformed: 0.0,
            rate_huge_body: 0.0,
            huge_body_bytes: 8 * 1024 * 1024,
            rate_nul: 0.0,
            rate_redirect: 0.0,
            redirect_to: None,
            rate_contradict: 0.0,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            seed: 42,
            api_key: None,
            usage_override: None,
            cache_read_tokens: 0,
            context_tokens: 0,
            record_requests: 0,
            spend_limit: false,
            batch_turnaround_ms: 0,
            batch_finalizing_ms: 0,
            batch_line_error_rate: 0.0,
            batch_expire_rate: 0.0,
            batch_lose_create_response: 0,
            batch_enqueued_token_limit: 0,
            batch_overloaded_rate: 0.0,
        }
    }
}

impl MockConfig {
    /// The share of requests that get a fault (every rate but `rate_contradict`).
    pub fn fault_rate(&self) -> f64 {
        self.rate_429
            + self.rate_5xx
            + self.rate_hang
            + self.rate_malformed
            + self.rate_huge_body
            + self.rate_nul
            + self.rate_redirect
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("rate_429", self.rate_429),
            ("rate_5xx", self.rate_5xx),
            ("rate_hang", self.rate_hang),
            ("rate_malformed", self.rate_malformed),
            ("rate_huge_body", self.rate_huge_body),
            ("rate_nul", self.rate_nul),
            ("rate_redirect", self.rate_redirect),
            ("rate_contradict", self.rate_contradict),
            ("batch_line_error_rate", self.batch_line_error_rate),
            ("batch_expire_rate", self.batch_expire_rate),
            ("batch_overloaded_rate", self.batch_overloaded_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be within [0, 1], got {r}"));
            }
        }
        let sum = self.fault_rate() + self.rate_contradict;
        if sum > 1.0 {
            return Err(format!("fault rates add up to {sum}, more than 1"));
        }
        let batch = self.batch_line_error_rate + self.batch_expire_rate;
        if batch > 1.0 {
            return Err(format!("batch_line_error_rate and batch_expire_rate add up to {batch}, more than 1"));
        }
        if self.rate_redirect > 0.0 && self.redirect_to.is_none() {
            return Err("rate_redirect needs redirect_to".into());
        }
        Ok(())
    }
}
