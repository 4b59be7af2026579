//! Dataset loaders and the synthetic dataset generator.
//!
//! Layout:
//! - [`error`]: `DatasetError`: every parse error names file, line and field.
//! - [`text`]: reading source files (UTF-8, or Latin-1 as old MovieLens files are) and hashing them.
//! - [`builder`]: dense ids for users and items, duplicate interactions dropped and counted.
//! - [`movielens`]: MovieLens-1M (`::`) and MovieLens-100k (`|`, tab) text layouts.
//! - [`movielens_csv`]: MovieLens "latest" CSV layout (quoted titles, optional tags).
//! - [`jsonlines`]: Amazon 2018 reviews with optional meta, and the generic `jsonl` format.
//! - [`stats`]: k-core sizes for `reasonrec dataset stats`.
//! - [`generate`]: a seeded generator of realistic-looking datasets in those formats, used for the
//!   bundled sample and for benchmarks (real MovieLens files may not be redistributed).
//!
//! Loaders are pure: they produce a [`reasonrec_core::data::NewDataset`]; the store writes it.

pub mod builder;
pub mod error;
pub mod generate;
pub mod jsonlines;
pub mod movielens;
pub mod movielens_csv;
pub mod stats;
pub mod text;

pub use error::DatasetError;

use reasonrec_core::data::NewDataset;
use std::path::Path;

/// Formats `reasonrec ingest --format` accepts.
pub const FORMATS: &[&str] = &["ml-1m", "ml-100k", "ml-latest", "amazon", "jsonl"];

/// Loads `path` in `format` as dataset `name`.
pub fn load(format: &str, path: &Path, name: &str) -> Result<NewDataset, DatasetError> {
    match format {
        "ml-1m" => movielens::load_ml1m(path, name),
        "ml-100k" => movielens::load_ml100k(path, name),
        "ml-latest" => movielens_csv::load_ml_latest(path, name),
        "amazon" => jsonlines::load_amazon(path, name),
        "jsonl" => jsonlines::load_generic(path, name),
        other => Err(DatasetError::UnknownFormat { format: other.to_string(), known: FORMATS.join(", ") }),
    }
}
