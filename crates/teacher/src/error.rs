//! Errors of a teacher call.

use reasonrec_core::attempt::ErrorClass;
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
    #[error("malformed answer (HTTP {status}): {message}")]
    Malformed { status: u16, message: String },
    #[error("prompt exceeds the model's context (HTTP {status}): {body}")]
    ContextTooLong { status: u16, body: String },
    #[error("endpoint refused our credentials (HTTP {status})")]
    Auth { status: u16 },
    #[error("request rejected (HTTP {status}): {body}")]
    BadRequest { status: u16, body: String },
    #[error("environment variable {var} (API key of endpoint {endpoint}) is not set")]
    MissingApiKey { endpoint: String, var: String },
    #[error("no teacher endpoint can take requests: {reason}")]
    NoEndpoint { reason: String },
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
        )
    }

    /// The worker cannot go on (every endpoint disabled): stop consuming rather than fail tasks.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TeacherError::NoEndpoint { .. } | TeacherError::MissingApiKey { .. })
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
            TeacherError::RateLimited { .. } => ErrorClass::RateLimited,
            TeacherError::Server { .. } => ErrorClass::Server,
            TeacherError::Timeout(_) => ErrorClass::Timeout,
            TeacherError::Connect(_) => ErrorClass::Connect,
            TeacherError::Malformed { .. } => ErrorClass::Malformed,
            TeacherError::ContextTooLong { .. } => ErrorClass::ContextTooLong,
            TeacherError::Auth { .. } | TeacherError::MissingApiKey { .. } | TeacherError::NoEndpoint { .. } => {
                ErrorClass::Auth
            }
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
            | TeacherError::BadRequest { status, .. } => Some(*status),
            TeacherError::Timeout(_)
            | TeacherError::Connect(_)
            | TeacherError::MissingApiKey { .. }
            | TeacherError::NoEndpoint { .. } => None,
        }
    }
}
