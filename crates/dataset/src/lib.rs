//! Dataset loaders and the synthetic dataset generator.
//!
//! Layout:
//! - [`error`]: `DatasetError`: every parse error names file, line and field.
//! - [`text`]: reading source files (UTF-8, or Latin-1 as old MovieLens files are) and hashing them.
//! - [`movielens`]: the MovieLens-1M format (`users.dat`, `movies.dat`, `ratings.dat`, `::`).
//! - [`generate`]: a seeded generator of realistic-looking datasets in those formats, used for the
//!   bundled sample and for benchmarks (real MovieLens files may not be redistributed).
//!
//! Loaders are pure: they produce a [`reasonrec_core::data::NewDataset`]; the store writes it.

pub mod error;
pub mod generate;
pub mod movielens;
pub mod text;

pub use error::DatasetError;

use reasonrec_core::data::NewDataset;
use std::path::Path;

/// Formats `reasonrec ingest --format` accepts.
pub const FORMATS: &[&str] = &["ml-1m"];

/// Loads `path` in `format` as dataset `name`.
pub fn load(format: &str, path: &Path, name: &str) -> Result<NewDataset, DatasetError> {
    match format {
        "ml-1m" => movielens::load_ml1m(path, name),
        other => Err(DatasetError::UnknownFormat { format: other.to_string(), known: FORMATS.join(", ") }),
    }
}
