//! Errors of the trainer.

use std::path::PathBuf;

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
}

impl TrainerError {
    pub fn is_retryable(&self) -> bool {
        false
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainerError::Io { path: path.into(), source }
    }
}
