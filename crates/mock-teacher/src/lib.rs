//! A real HTTP server that speaks the OpenAI chat-completions and the Anthropic Messages
//! protocols, standing in for a teacher LLM in tests, the demo and benchmarks. Faults, limits and
//! answers are the same in both; errors, bodies and rate-limit headers are each protocol's own
//! (Anthropic: the error envelope with `request_id`, 529 overloaded, `anthropic-ratelimit-*`).
//!
//! Layout:
//! - [`config`]: the fault and limit knobs (latency, 429 with Retry-After, 5xx, hangs, malformed
//!   bodies, its own requests/min and tokens/min limit), changeable at run time.
//! - [`answer`]: deterministic, prompt-aware answers per stage (quotes the titles in the prompt;
//!   a reasoning answer agrees with the outcome the prompt states).
//! - [`limits`]: the sliding-minute window that enforces the mock's own limit.
//! - [`server`] holds the routes (`/v1/chat/completions`, `/v1/messages`, `/v1/models`, `/stats`,
//!   `/config`, `/healthz`), the one answer builder of live calls and batch lines,
//!   and the handle tests use to start, inspect and stop it.
//! - `batch`: both providers' Batch APIs (OpenAI `/v1/files` + `/v1/batches`, Anthropic
//!   `/v1/messages/batches`): lifecycle by wall-clock time since creation, per-line faults,
//!   expiry, cancel, lost create responses, the enqueued-token limit; a multipart reader.

pub mod answer;
mod batch;
pub mod config;
pub mod limits;
pub mod server;

pub use config::{MockConfig, RetryAfterFormat};
pub use server::{MockHandle, MockStats, spawn};

/// Errors of the mock server.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

impl MockError {
    pub fn is_retryable(&self) -> bool {
        false
    }
}
