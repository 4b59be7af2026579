//! Teacher LLM clients over the OpenAI chat-completions protocol.
//!
//! Layout:
//! - [`error`]: `TeacherError`, classified retryable (429, 5xx, timeouts, connection errors,
//!   malformed bodies) or permanent (400, context too long, 401/403, missing API key).
//! - [`protocol`]: the request and response bodies of `POST /v1/chat/completions`.
//! - [`client`]: one endpoint: HTTP call, error classification, Retry-After, token accounting,
//!   in-flight and requests/min limits.
//! - [`retry`]: backon retries around a client, recording every attempt for the cost ledger.
//! - [`pool`]: the configured endpoints, picked by weight.

pub mod client;
pub mod error;
pub mod pool;
pub mod protocol;
pub mod retry;

pub use client::{ChatAnswer, TeacherClient};
pub use error::TeacherError;
pub use pool::TeacherPool;
pub use retry::{RetryPolicy, call_with_retries};
