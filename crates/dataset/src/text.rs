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

/// How a format's files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON and CSV: UTF-8, and an invalid byte is an error naming its line and column.
    Utf8,
    /// MovieLens `.dat` and `u.*` files, Latin-1 (windows-1252) by origin: decoded as UTF-8 when
    /// they are valid UTF-8, else as Latin-1 (`SourceFile::latin1`, said in the ingest summary).
    Utf8OrLatin1,
}

/// Reads a file whole and decodes it. A NUL byte (which Postgres cannot store in text) is an
/// error naming its line and column, in every encoding.
pub fn read_source(path: &Path, encoding: Encoding) -> Result<SourceFile, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(located(path, &bytes, offset, "NUL character (U+0000), which cannot be stored".into()));
    }
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let len = bytes.len();
    let (text, latin1) = match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) if encoding == Encoding::Utf8 => {
            let (bytes, offset) = (e.as_bytes(), e.utf8_error().valid_up_to());
            let message = format!("invalid UTF-8 (byte 0x{:02x}); this format is UTF-8", bytes[offset]);
            return Err(located(path, bytes, offset, message));
        }
        Err(e) => {
            let (cow, _, _) = encoding_rs::WINDOWS_1252.decode(e.as_bytes());
            (cow.into_owned(), true)
        }
    };
    Ok(SourceFile { name, text, bytes: len, latin1, digest })
}

/// An error at byte `offset` of the file, named by line and column.
fn located(path: &Path, bytes: &[u8], offset: usize, message: String) -> DatasetError {
    let (line, column) = line_and_column(bytes, offset);
    DatasetError::Encoding { path: path.to_path_buf(), line, column, message }
}

/// 1-based line and byte column of `offset` in `bytes`.
fn line_and_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rposition(|&b| b == b'\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tag: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rr-text-{}-{tag}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("f.jsonl");
        let _ = std::fs::write(&path, bytes);
        path
    }

    #[test]
    fn an_invalid_utf8_byte_is_named_by_line_and_column_unless_latin1_is_allowed() {
        let path = file("utf8", b"{\"a\":1}\n{\"title\":\"Caf\xe9\"}\n");
        let err = read_source(&path, Encoding::Utf8).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.ends_with("f.jsonl:2:14: invalid UTF-8 (byte 0xe9); this format is UTF-8"), "{err}");
        let latin1 = read_source(&path, Encoding::Utf8OrLatin1);
        assert!(matches!(&latin1, Ok(f) if f.latin1 && f.text.contains("Café")));
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
    }

    #[test]
    fn a_nul_byte_is_named_in_every_encoding() {
        let path = file("nul", b"1::2::3\n4::x\x00y::5\n");
        for enc in [Encoding::Utf8, Encoding::Utf8OrLatin1] {
            let err = read_source(&path, enc).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.ends_with("f.jsonl:2:5: NUL character (U+0000), which cannot be stored"), "{err}");
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
    }
}
