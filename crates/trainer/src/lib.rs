//! The trainer: turns a finished corpus into a student fine-tuning set, launches a LoRA run on
//! it, and evaluates a student's predictions.
//!
//! Layout:
//! - [`error`]: `TrainerError`, retryable when the store error is.
//! - [`export`]: `train export`: a run's done reasoning tasks, streamed in keyset pages, as
//!   train/validation/test and few-shot files with a manifest.
//! - [`example`]: one student example: the student prompt (no label) and the target
//!   "Prediction: Yes|No" + the teacher's reasoning.
//! - [`filters`]: the export's optional quality filters (length, label consistency, duplicates).
//! - [`fewshot`]: seeded, stratified, nested few-shot sets.
//! - [`files`]: the output files (JSONL, Parquet) with their checksums as they are written.
//! - [`parquet`]: the Parquet schema and writer (arrow-rs).
//! - [`manifest`]: `manifest.json`, what an export holds and where it came from.
//! - [`launch`]: `train launch`: the LoRA spec for `scripts/train_student.py` and the command.
//! - [`metrics`]: AUC (ties like sklearn), accuracy, F1, ROUGE-L F1, BLEU-4.
//! - [`eval`]: joins a predictions file with exported examples and writes the JSON and markdown
//!   report.

pub mod error;
pub mod eval;
pub mod example;
pub mod export;
pub mod fewshot;
pub mod files;
pub mod filters;
pub mod launch;
pub mod manifest;
pub mod metrics;
pub mod parquet;

pub use error::TrainerError;
