//! Errors of the worker.

use reasonrec_core::CoreError;
use reasonrec_queue::QueueError;
use reasonrec_store::StoreError;
use reasonrec_teacher::TeacherError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    #[error("prompt too long: {size} {unit}, over the cap of {cap} ({setting})")]
    PromptTooLong { size: u64, unit: &'static str, cap: u64, setting: &'static str },
    /// The task's inputs changed under every one of several renders (upstream outputs kept
    /// arriving): the message is retried later.
    #[error("task {task_id}: its inputs changed during each of {renders} renders; retried later")]
    InputsKeptChanging { task_id: uuid::Uuid, renders: u32 },
    /// A batch's spool file could not be written or read (the disk): the batch is built again.
    #[error("batch file: {0}")]
    Spool(#[source] std::io::Error),
    /// The task's handler panicked (a bug): nothing was committed.
    #[error("task handler panicked: {0}")]
    Panicked(String),
}

impl WorkerError {
    /// This worker cannot do any task (every teacher endpoint refused our credentials): it
    /// stops consuming and exits with an error, leaving the queue untouched.
    pub fn is_fatal(&self) -> bool {
        matches!(self, WorkerError::Teacher(e) if e.is_fatal())
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Store(e) => e.is_retryable(),
            WorkerError::Queue(e) => e.is_retryable(),
            WorkerError::Core(e) => e.is_retryable(),
            WorkerError::Teacher(e) => e.is_retryable(),
            WorkerError::PromptTooLong { .. } => false,
            WorkerError::InputsKeptChanging { .. } | WorkerError::Panicked(_) | WorkerError::Spool(_) => true,
        }
    }
}
