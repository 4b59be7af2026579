//! One teacher call, as recorded in the cost ledger (`attempts` table).

use serde::Serialize;

/// How a call ended. `None` in [`AttemptRecord::error_class`] means an accepted answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    RateLimited,
    Server,
    Timeout,
    Connect,
    Malformed,
    ContextTooLong,
    Auth,
    BadRequest,
    Rejected,
    /// The response body or the answer was over its cap (`max_response_bytes`,
    /// `max_answer_chars`); nothing of it is kept.
    TooLarge,
    /// The endpoint redirected to another origin; the request was not sent there.
    Redirect,
    /// A batch line the provider's 24-hour window ended before it ran (not billed).
    Expired,
    /// A batch line cancelled before it ran (not billed).
    Cancelled,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Server => "server",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Malformed => "malformed",
            ErrorClass::ContextTooLong => "context_too_long",
            ErrorClass::Auth => "auth",
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Rejected => "rejected",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::Redirect => "redirect",
            ErrorClass::Expired => "expired",
            ErrorClass::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// Given when the attempt is made; makes writing the row idempotent.
    pub id: uuid::Uuid,
    pub endpoint: String,
    pub model: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost_usd: f64,
}
