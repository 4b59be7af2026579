//! Teacher LLM clients over the OpenAI chat-completions and Anthropic Messages protocols.
//!
//! Layout:
//! - [`error`]: `TeacherError`, classified retryable (429, 5xx, timeouts, connection errors,
//!   malformed bodies) or permanent (400, context too long, 401/403, missing API key).
//! - [`protocol`]: the request and response bodies of `POST /v1/chat/completions`.
//! - [`anthropic`]: the bodies and rate-limit headers of `POST /v1/messages`.
//! - [`client`]: one endpoint: HTTP call under its limits, error classification, Retry-After and
//!   `x-ratelimit-*` headers, token accounting.
//! - [`bucket`]: token buckets with refunds and changeable rates (tokens per minute).
//! - [`limits`]: an endpoint's limits in this process: in-flight, requests/min (governor),
//!   tokens/min, pauses, the fleet share, AIMD after 429s.
//! - [`health`]: the circuit breaker (and endpoints disabled by 401/403).
//! - [`retry`]: the retry policy (backon's exponential backoff with jitter) and attempt records.
//! - [`pool`]: the configured endpoints and the call loop: weighted choice among healthy
//!   endpoints, retries, failover.

pub mod anthropic;
pub mod batch;
pub mod bucket;
pub mod client;
pub mod error;
pub mod health;
pub mod limits;
pub mod pool;
pub mod protocol;
pub mod retry;

pub use batch::BatchClient;
pub use client::{ChatAnswer, TeacherClient};
pub use error::TeacherError;
pub use pool::{CallOutcome, TeacherPool};
pub use retry::{RetryPolicy, call_with_retries};
