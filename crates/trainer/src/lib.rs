//! The trainer: turns a finished corpus into a student fine-tuning set, launches a LoRA run on
//! it, and evaluates a student's predictions.
//!
//! Layout:
//! - [`error`]: `TrainerError`, retryable when the store error is.
//! - [`metrics`]: AUC (ties like sklearn), accuracy, F1, ROUGE-L F1, BLEU-4.
//! - [`eval`]: joins a predictions file with exported examples and writes the JSON and markdown
//!   report.

pub mod error;
pub mod eval;
pub mod metrics;

pub use error::TrainerError;
