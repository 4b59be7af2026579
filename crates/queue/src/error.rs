//! Errors of the queue crate.

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not answer {what} within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
    /// The broker nacked a publish or returned it as unroutable.
    #[error("broker refused {what}")]
    Refused { what: &'static str },
}

impl QueueError {
    /// Broker errors are connection or channel trouble: reconnecting and retrying may succeed.
    /// A topology mismatch (PRECONDITION_FAILED) will not; it surfaces at declaration time.
    /// The broker answered 404 NOT_FOUND (a queue or exchange that does not exist); the channel
    /// it came on is closed.
    pub fn is_not_found(&self) -> bool {
        matches!(self, QueueError::Amqp(e) if e.to_string().contains("NOT_FOUND"))
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Amqp(e) => !e.to_string().contains("PRECONDITION_FAILED"),
            QueueError::Timeout { .. } | QueueError::Refused { .. } => true,
        }
    }
}

/// Runs `fut` with a deadline: channel and consumer creation can hang on a half-dead socket.
pub async fn deadline<T>(
    what: &'static str,
    secs: u64,
    fut: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), fut).await {
        Ok(r) => r.map_err(QueueError::from),
        Err(_) => Err(QueueError::Timeout { what, secs }),
    }
}
