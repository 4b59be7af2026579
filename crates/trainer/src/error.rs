//! Errors of the trainer.

use std::path::PathBuf;

use reasonrec_core::CoreError;
use reasonrec_store::StoreError;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad input file: names the file, the line and the field.
    #[error("{path}:{line}: {message}")]
    Input { path: PathBuf, line: u64, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("parquet {path}: {message}")]
    Parquet { path: PathBuf, message: String },
    /// The run was cancelled before it completed; `--partial` exports what it finished.
    #[error("run {0} was cancelled before it completed (export what it finished with --partial)")]
    RunCancelled(Uuid),
    /// A stored row the export cannot turn into an example (bad input JSON, missing item).
    #[error("task {task}: {message}")]
    BadTask { task: Uuid, message: String },
}

impl TrainerError {
    /// Only database errors can go away on retry (a lost connection, a restarting server).
    pub fn is_retryable(&self) -> bool {
        match self {
            TrainerError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainerError::Io { path: path.into(), source }
    }
}
