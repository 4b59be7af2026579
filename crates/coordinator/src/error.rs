//! Errors of the coordinator.

use reasonrec_queue::QueueError;
use reasonrec_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("planning: {0}")]
    Plan(String),
    /// A chore of the outbox failed ([`crate::outbox`]): which one, and why.
    #[error("{chore}: {source}")]
    Chore { chore: &'static str, source: Box<CoordinatorError> },
}

impl CoordinatorError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CoordinatorError::Store(e) => e.is_retryable(),
            CoordinatorError::Queue(e) => e.is_retryable(),
            CoordinatorError::Plan(_) => false,
            CoordinatorError::Chore { source, .. } => source.is_retryable(),
        }
    }
}
