//! Reading and hashing source files.

use crate::error::DatasetError;
use sha2::{Digest, Sha256};
use std::path::Path;

/// A source file read whole, decoded to text.
pub struct SourceFile {
    pub name: String,
    pub text: String,
    pub bytes: usize,
    pub latin1: bool,
    digest: [u8; 32],
}

/// Reads a file as UTF-8, falling back to Latin-1 (windows-1252) when it is not valid UTF-8,
/// as in the original MovieLens-1M files.
pub fn read_source(path: &Path) -> Result<SourceFile, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let len = bytes.len();
    let (text, latin1) = match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => {
            let (cow, _, _) = encoding_rs::WINDOWS_1252.decode(e.as_bytes());
            (cow.into_owned(), true)
        }
    };
    Ok(SourceFile { name, text, bytes: len, latin1, digest })
}

/// Content hash of a dataset: SHA-256 over each file's name and SHA-256, in the given order.
pub fn content_hash(files: &[&SourceFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.digest);
    }
    hex::encode(h.finalize())
}

/// JSON description of the files for the dataset row.
pub fn describe(files: &[&SourceFile]) -> serde_json::Value {
    serde_json::Value::Array(
        files.iter().map(|f| serde_json::json!({"file": f.name, "bytes": f.bytes, "latin1": f.latin1})).collect(),
    )
}
