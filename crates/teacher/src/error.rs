//! Errors of a teacher call.

use reasonrec_core::attempt::ErrorClass;
use reasonrec_core::settings::TokenUsage;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TeacherError {
    #[error("rate limited (HTTP {status})")]
    RateLimited { status: u16, retry_after: Option<Duration> },
    #[error("server error HTTP {status}: {body}")]
    Server { status: u16, body: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    /// `billed`: what a 2xx answer we could not use cost at the provider ([`Self::billed`]).
    #[error("malformed answer (HTTP {status}): {message}")]
    Malformed { status: u16, message: String, billed: Option<TokenUsage> },
    #[error("prompt exceeds the model's context (HTTP {status}): {body}")]
    ContextTooLong { status: u16, body: String },
    #[error("endpoint refused our credentials (HTTP {status})")]
    Auth { status: u16 },
    /// A spend limit, which no retry gets past: Anthropic's 429 without `retry-after`, OpenAI's
    /// 429 `insufficient_quota`. The endpoint is taken out like one refusing our key.
    #[error("endpoint's spend limit or quota reached (HTTP {status})")]
    SpendLimit { status: u16 },
    #[error("request rejected (HTTP {status}): {body}")]
    BadRequest { status: u16, body: String },
    #[error("environment variable {var} (API key of endpoint {endpoint}) is not set")]
    MissingApiKey { endpoint: String, var: String },
    #[error("no teacher endpoint can take requests: {reason}")]
    NoEndpoint { reason: String },
    #[error("{what} over the cap of {limit} (HTTP {status})")]
    TooLarge { status: u16, what: &'static str, limit: u64, billed: Option<TokenUsage> },
    #[error("redirected (HTTP {status}) to another origin; not followed")]
    Redirect { status: u16 },
    /// An API key would travel in clear text to another machine.
    #[error("endpoint {endpoint}: an API key is only sent over https, or plain http to this machine")]
    InsecureKey { endpoint: String },
    /// The server asked for a wait that would carry the task past `teacher.max_call_secs`: the
    /// task goes back to the queue (a retry tier) rather than hold its delivery.
    #[error("the teacher asks to wait {wait:?}, past this task's time ({limit:?}); handed back to the queue")]
    Deferred { wait: Duration, limit: Duration },
}

impl TeacherError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TeacherError::RateLimited { .. }
                | TeacherError::Server { .. }
                | TeacherError::Timeout(_)
                | TeacherError::Connect(_)
                | TeacherError::Malformed { .. }
                | TeacherError::TooLarge { .. }
                | TeacherError::Deferred { .. }
        )
    }

    /// The worker cannot go on (every endpoint disabled): stop consuming rather than fail tasks.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            TeacherError::NoEndpoint { .. } | TeacherError::MissingApiKey { .. } | TeacherError::InsecureKey { .. }
        )
    }

    /// The tokens a provider billed for a 2xx answer we could not use (a body that does not
    /// parse, an answer over a cap or with NUL characters): its reported usage where the body
    /// still says it, else the prompt's estimate (the least it cost). None for every other error:
    /// a refused or failed request is not billed.
    pub fn billed(&self) -> Option<TokenUsage> {
        match self {
            TeacherError::Malformed { billed, .. } | TeacherError::TooLarge { billed, .. } => *billed,
            _ => None,
        }
    }

    /// This error with `usage` as what it was billed (only for the kinds a 2xx answer can end
    /// in: malformed, too large), unless it already says.
    pub fn billed_at(mut self, usage: TokenUsage) -> Self {
        if let TeacherError::Malformed { billed, .. } | TeacherError::TooLarge { billed, .. } = &mut self {
            billed.get_or_insert(usage);
        }
        self
    }

    /// What the server asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TeacherError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            TeacherError::RateLimited { .. } | TeacherError::Deferred { .. } | TeacherError::SpendLimit { .. } => {
                ErrorClass::RateLimited
            }
            TeacherError::Server { .. } => ErrorClass::Server,
            TeacherError::Timeout(_) => ErrorClass::Timeout,
            TeacherError::Connect(_) => ErrorClass::Connect,
            TeacherError::Malformed { .. } => ErrorClass::Malformed,
            TeacherError::ContextTooLong { .. } => ErrorClass::ContextTooLong,
            TeacherError::Auth { .. }
            | TeacherError::MissingApiKey { .. }
            | TeacherError::NoEndpoint { .. }
            | TeacherError::InsecureKey { .. } => ErrorClass::Auth,
            TeacherError::TooLarge { .. } => ErrorClass::TooLarge,
            TeacherError::Redirect { .. } => ErrorClass::Redirect,
            TeacherError::BadRequest { .. } => ErrorClass::BadRequest,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            TeacherError::RateLimited { status, .. }
            | TeacherError::Server { status, .. }
            | TeacherError::Malformed { status, .. }
            | TeacherError::ContextTooLong { status, .. }
            | TeacherError::Auth { status }
            | TeacherError::SpendLimit { status }
            | TeacherError::BadRequest { status, .. }
            | TeacherError::TooLarge { status, .. }
            | TeacherError::Redirect { status } => Some(*status),
            TeacherError::Deferred { .. } | TeacherError::InsecureKey { .. } => None,
            TeacherError::Timeout(_)
            | TeacherError::Connect(_)
            | TeacherError::MissingApiKey { .. }
            | TeacherError::NoEndpoint { .. } => None,
        }
    }
}
