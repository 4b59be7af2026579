//! The export's output files: one [`ExampleSink`] per set (a split or a few-shot set) writes its
//! rows as JSONL and/or Parquet, counting rows, bytes and SHA-256 as the bytes go out (no second
//! read for the manifest's checksums).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::TrainerError;
use crate::example::StudentExample;
use crate::parquet::ParquetFile;

/// Which files an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Jsonl,
    Parquet,
    Both,
}

impl Format {
    fn jsonl(self) -> bool {
        matches!(self, Format::Jsonl | Format::Both)
    }

    fn parquet(self) -> bool {
        matches!(self, Format::Parquet | Format::Both)
    }
}

/// One written file, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the export folder.
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// Flushes and returns (bytes, hex SHA-256).
    pub fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.bytes, hex::encode(self.hasher.finalize())))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type FileWriter = HashingWriter<BufWriter<File>>;

fn create(path: &Path) -> Result<FileWriter, TrainerError> {
    let file = File::create(path).map_err(|e| TrainerError::io(path, e))?;
    Ok(HashingWriter::new(BufWriter::with_capacity(1 << 20, file)))
}

/// The files of one set of examples (`<stem>.jsonl`, `<stem>.parquet`).
pub struct ExampleSink {
    dir: PathBuf,
    stem: String,
    rows: u64,
    jsonl: Option<FileWriter>,
    parquet: Option<ParquetFile<FileWriter>>,
    line: Vec<u8>,
}

impl ExampleSink {
    pub fn create(dir: &Path, stem: &str, format: Format) -> Result<Self, TrainerError> {
        let jsonl = format.jsonl().then(|| create(&dir.join(format!("{stem}.jsonl")))).transpose()?;
        let parquet = match format.parquet() {
            true => {
                let path = dir.join(format!("{stem}.parquet"));
                Some(ParquetFile::new(&path, create(&path)?)?)
            }
            false => None,
        };
        Ok(Self { dir: dir.to_path_buf(), stem: stem.to_string(), rows: 0, jsonl, parquet, line: Vec::new() })
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.stem))
    }

    /// Appends rows (in the order given).
    pub fn write(&mut self, rows: &[&StudentExample]) -> Result<(), TrainerError> {
        if let Some(w) = self.jsonl.as_mut() {
            for r in rows {
                self.line.clear();
                serde_json::to_writer(&mut self.line, r)
                    .map_err(|e| TrainerError::Invalid(format!("cannot serialise example {}: {e}", r.id)))?;
                self.line.push(b'\n');
                w.write_all(&self.line)
                    .map_err(|e| TrainerError::io(self.dir.join(format!("{}.jsonl", self.stem)), e))?;
            }
        }
        if let Some(p) = self.parquet.as_mut() {
            p.write(rows)?;
        }
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Closes the files; returns their manifest entries (JSONL first).
    pub fn finish(self) -> Result<Vec<FileEntry>, TrainerError> {
        let mut out = Vec::new();
        let (jsonl_path, parquet_path) = (self.path("jsonl"), self.path("parquet"));
        if let Some(w) = self.jsonl {
            let path = jsonl_path;
            let (bytes, sha256) = w.finish().map_err(|e| TrainerError::io(&path, e))?;
            out.push(FileEntry { name: format!("{}.jsonl", self.stem), rows: self.rows, bytes, sha256 });
        }
        if let Some(p) = self.parquet {
            let path = parquet_path;
            let (bytes, sha256) = p.finish()?.finish().map_err(|e| TrainerError::io(&path, e))?;
            out.push(FileEntry { name: format!("{}.parquet", self.stem), rows: self.rows, bytes, sha256 });
        }
        Ok(out)
    }
}

/// What the export's main loop hands the writer thread: one batch of rows per sink, in sink order.
type Batch = Vec<Vec<StudentExample>>;
type Writer = std::thread::JoinHandle<Result<Vec<FileEntry>, TrainerError>>;

/// Sinks written on their own thread: serialising, hashing (SHA-256 is a fifth of the export's
/// CPU) and writing run beside the database reads and the prompt rendering instead of after them.
/// At most [`BackgroundSinks::QUEUE`] batches wait, so memory stays bounded when the disk is slow.
pub struct BackgroundSinks {
    tx: Option<std::sync::mpsc::SyncSender<Batch>>,
    writer: Option<Writer>,
}

impl BackgroundSinks {
    /// Batches that may wait for the writer.
    pub const QUEUE: usize = 1;

    /// Moves `sinks` to a new thread that writes what [`BackgroundSinks::send`] hands it.
    pub fn spawn(mut sinks: Vec<ExampleSink>) -> Result<Self, TrainerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(Self::QUEUE);
        let writer = std::thread::Builder::new()
            .name("export-writer".into())
            .spawn(move || {
                for batch in rx {
                    for (sink, rows) in sinks.iter_mut().zip(&batch) {
                        let rows: Vec<&StudentExample> = rows.iter().collect();
                        sink.write(&rows)?;
                    }
                }
                let mut files = Vec::new();
                for sink in sinks {
                    files.extend(sink.finish()?);
                }
                Ok(files)
            })
            .map_err(|e| TrainerError::Invalid(format!("cannot start the export writer thread: {e}")))?;
        Ok(Self { tx: Some(tx), writer: Some(writer) })
    }

    /// Queues one batch (one `Vec` per sink, in the order the sinks were given). Blocks while
    /// [`BackgroundSinks::QUEUE`] batches wait. If the writer stopped on an error, that error.
    pub fn send(&mut self, batch: Batch) -> Result<(), TrainerError> {
        if self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok()) {
            return Ok(());
        }
        // The writer hung up: it returned an error (or panicked).
        self.tx = None;
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(TrainerError::Invalid("the export writer stopped early".into())),
        }
    }

    fn join(&mut self) -> Result<Vec<FileEntry>, TrainerError> {
        match self.writer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(TrainerError::Invalid("the export writer thread panicked".into())),
            None => Err(TrainerError::Invalid("the export writer already stopped".into())),
        }
    }

    /// Waits for the writer to write everything queued and close the files; their entries.
    pub fn finish(mut self) -> Result<Vec<FileEntry>, TrainerError> {
        drop(self.tx.take());
        self.join()
    }
}
