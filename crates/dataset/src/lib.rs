//! Dataset loaders and the synthetic dataset generator.
//!
//! Layout:
//! - [`error`]: `DatasetError`: every parse error names file, line and field.
//! - [`text`]: checking and hashing source files in one pass, then reading them line by line
//!   (UTF-8, or Latin-1 as old MovieLens files are).
//! - [`builder`]: dense ids for users and items; interactions kept (duplicates dropped and
//!   counted) or streamed to an [`InteractionSink`].
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

pub use builder::{DatasetBuilder, InteractionSink, STREAM_BATCH};
pub use error::DatasetError;

use reasonrec_core::data::NewDataset;
use std::path::Path;

/// Formats `reasonrec ingest --format` accepts.
pub const FORMATS: &[&str] = &["ml-1m", "ml-100k", "ml-latest", "amazon", "jsonl"];

/// Loads `path` in `format` as dataset `name`, every interaction in memory (tests, `dataset
/// stats`, small files).
pub fn load(format: &str, path: &Path, name: &str) -> Result<NewDataset, DatasetError> {
    load_with(format, path, name, DatasetBuilder::default())
}

/// Loads `path` in `format` as dataset `name`, handing interactions to `sink` in batches as
/// they are parsed: memory holds users and items, not interactions, whatever the file's size.
/// The returned dataset has no interactions; exact repeats are left to the writer.
pub fn load_streaming(
    format: &str,
    path: &Path,
    name: &str,
    sink: Box<dyn InteractionSink>,
) -> Result<NewDataset, DatasetError> {
    load_with(format, path, name, DatasetBuilder::streaming(sink))
}

fn load_with(format: &str, path: &Path, name: &str, b: DatasetBuilder) -> Result<NewDataset, DatasetError> {
    match format {
        "ml-1m" => movielens::load_ml1m(path, name, b),
        "ml-100k" => movielens::load_ml100k(path, name, b),
        "ml-latest" => movielens_csv::load_ml_latest(path, name, b),
        "amazon" => jsonlines::load_amazon(path, name, b),
        "jsonl" => jsonlines::load_generic(path, name, b),
        other => Err(DatasetError::UnknownFormat { format: other.to_string(), known: FORMATS.join(", ") }),
    }
}
