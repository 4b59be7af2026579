//! Reading and hashing source files.

use crate::error::DatasetError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A source file, checked and hashed in one streaming pass; its lines are read again, one at a
/// time, when parsed ([`SourceFile::for_each_line`], [`SourceFile::reader`]): memory does not
/// grow with the file.
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
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

fn open(path: &Path) -> Result<BufReader<File>, DatasetError> {
    let file = File::open(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    Ok(BufReader::with_capacity(1 << 16, file))
}

/// Checks and hashes a file line by line. A NUL byte (which Postgres cannot store in text) is
/// an error naming its line and column in every encoding; so is an invalid UTF-8 byte in a
/// [`Encoding::Utf8`] file.
pub fn read_source(path: &Path, encoding: Encoding) -> Result<SourceFile, DatasetError> {
    let io = |source| DatasetError::Io { path: path.to_path_buf(), source };
    let mut reader = open(path)?;
    let mut hasher = Sha256::new();
    let (mut bytes, mut latin1, mut line_no) = (0usize, false, 0usize);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        line_no += 1;
        bytes += line.len();
        hasher.update(&line);
        let located = |column: usize, message: String| DatasetError::Encoding {
            path: path.to_path_buf(),
            line: line_no,
            column: column + 1,
            message,
        };
        if let Some(col) = line.iter().position(|&b| b == 0) {
            return Err(located(col, "NUL character (U+0000), which cannot be stored".into()));
        }
        if !latin1 && let Err(e) = std::str::from_utf8(&line) {
            match encoding {
                Encoding::Utf8 => {
                    let col = e.valid_up_to();
                    let message = format!("invalid UTF-8 (byte 0x{:02x}); this format is UTF-8", line[col]);
                    return Err(located(col, message));
                }
                Encoding::Utf8OrLatin1 => latin1 = true,
            }
        }
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(SourceFile { name, path: path.to_path_buf(), bytes, latin1, digest: hasher.finalize().into() })
}

impl SourceFile {
    /// Calls `f` with each line (1-based number, text without its line break), read from disk
    /// one at a time and decoded as the check pass found (UTF-8 or Latin-1).
    pub fn for_each_line(
        &self,
        mut f: impl FnMut(usize, &str) -> Result<(), DatasetError>,
    ) -> Result<(), DatasetError> {
        let io = |source| DatasetError::Io { path: self.path.clone(), source };
        let mut reader = open(&self.path)?;
        let mut line = Vec::new();
        let mut line_no = 0;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                return Ok(());
            }
            line_no += 1;
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            if self.latin1 {
                let (text, _, _) = encoding_rs::WINDOWS_1252.decode(&line);
                f(line_no, &text)?;
            } else {
                let text = std::str::from_utf8(&line).map_err(|e| DatasetError::Encoding {
                    path: self.path.clone(),
                    line: line_no,
                    column: e.valid_up_to() + 1,
                    message: "invalid UTF-8: the file changed while it was read".into(),
                })?;
                f(line_no, text)?;
            }
        }
    }

    /// The file's bytes, buffered (for parsers that read a stream themselves, as `csv` does).
    pub fn reader(&self) -> Result<impl Read + use<>, DatasetError> {
        open(&self.path)
    }
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
        let Ok(latin1) = read_source(&path, Encoding::Utf8OrLatin1) else { panic!("Latin-1 is allowed") };
        let mut lines = Vec::new();
        let read = latin1.for_each_line(|n, l| {
            lines.push((n, l.to_string()));
            Ok(())
        });
        assert!(read.is_ok() && latin1.latin1);
        assert_eq!(lines, vec![(1, "{\"a\":1}".to_string()), (2, "{\"title\":\"Café\"}".to_string())]);
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
