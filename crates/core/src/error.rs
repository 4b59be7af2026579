//! Errors of the core crate.

use std::path::PathBuf;

/// Everything that can go wrong in configuration, templates and message decoding.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("prompt template {path}: {message}")]
    Template { path: PathBuf, message: String },
    #[error("no prompt template for {stage} (family {family}) in {dir}")]
    TemplateMissing { stage: String, family: String, dir: PathBuf },
    #[error("cannot decode task message: {0}")]
    BadMessage(String),
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl CoreError {
    /// Core errors come from bad input or configuration: none of them goes away on retry.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
