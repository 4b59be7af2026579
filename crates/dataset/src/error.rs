//! Errors of the loaders.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Parse { path: PathBuf, line: usize, field: &'static str, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Encoding { path: PathBuf, line: usize, column: usize, message: String },
    #[error("unknown format {format:?} (known: {known})")]
    UnknownFormat { format: String, known: String },
    #[error("{0}")]
    Invalid(String),
    /// A streaming load's sink took no more rows (the database writer stopped: the dataset was
    /// unchanged, or the writer failed and reports why).
    #[error("the database writer stopped")]
    SinkClosed,
}

impl DatasetError {
    /// Bad input stays bad: nothing here is worth retrying.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
