//! Parquet files of student examples, through arrow-rs.
//!
//! Schema (all columns non-null): id, split, user_id, item_id (utf8), label (int64), instruction,
//! input, output (utf8), messages (list<struct<role utf8, content utf8>>), reasoning (utf8), the
//! JSONL fields in the same order, so `datasets.load_dataset("parquet", ...)` gives the same
//! records. Row groups hold at most [`ROW_GROUP_ROWS`] rows and [`ROW_GROUP_BYTES`] bytes, so the
//! writer's buffer (one row group, encoded) stays small whatever the export's size. Snappy pages; no dictionary except
//! for `split`; no timestamps: the same rows give the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, OffsetBufferBuilder, StringBuilder};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::TrainerError;
use crate::example::StudentExample;

/// Rows per row group, at most.
pub const ROW_GROUP_ROWS: usize = 8_192;
/// Encoded bytes per row group, at most (long prompts reach it before the row count).
pub const ROW_GROUP_BYTES: usize = 8 << 20;
/// Bytes per data page, at most: each column buffers one page before compressing it.
pub const PAGE_BYTES: usize = 256 << 10;
/// Rows per record batch handed to the writer (bounds the arrays built for one write).
pub const BATCH_ROWS: usize = 512;

fn message_fields() -> Fields {
    Fields::from(vec![Field::new("role", DataType::Utf8, false), Field::new("content", DataType::Utf8, false)])
}

fn message_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(message_fields()), false))
}

/// The schema of an exported file.
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        utf8("id"),
        utf8("split"),
        utf8("user_id"),
        utf8("item_id"),
        Field::new("label", DataType::Int64, false),
        utf8("instruction"),
        utf8("input"),
        utf8("output"),
        Field::new("messages", DataType::List(message_item()), false),
        utf8("reasoning"),
    ]))
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(ColumnPath::from("split"), true)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_data_page_size_limit(PAGE_BYTES)
        .build()
}

/// The record batch of `rows`.
pub fn batch(rows: &[&StudentExample]) -> Result<RecordBatch, TrainerError> {
    let text = |f: &dyn Fn(&StudentExample) -> &str| -> ArrayRef {
        let bytes = rows.iter().map(|r| f(r).len()).sum();
        let mut b = StringBuilder::with_capacity(rows.len(), bytes);
        for r in rows {
            b.append_value(f(r));
        }
        Arc::new(b.finish())
    };
    let mut label = Int64Builder::with_capacity(rows.len());
    let n_messages = rows.iter().map(|r| r.messages.len()).sum();
    let mut roles = StringBuilder::with_capacity(n_messages, n_messages * 9);
    let mut contents = StringBuilder::with_capacity(n_messages, rows.iter().map(|r| r.input.len() * 2).sum());
    let mut offsets = OffsetBufferBuilder::<i32>::new(rows.len());
    for r in rows {
        label.append_value(i64::from(r.label));
        for m in &r.messages {
            roles.append_value(&m.role);
            contents.append_value(&m.content);
        }
        offsets.push_length(r.messages.len());
    }
    let structs = StructArray::try_new(
        message_fields(),
        vec![Arc::new(roles.finish()) as ArrayRef, Arc::new(contents.finish())],
        None,
    )
    .map_err(|e| TrainerError::Invalid(format!("messages column: {e}")))?;
    let messages = ListArray::try_new(message_item(), offsets.finish(), Arc::new(structs), None)
        .map_err(|e| TrainerError::Invalid(format!("messages column: {e}")))?;
    let columns: Vec<ArrayRef> = vec![
        text(&|r| &r.id),
        text(&|r| &r.split),
        text(&|r| &r.user_id),
        text(&|r| &r.item_id),
        Arc::new(label.finish()),
        text(&|r| &r.instruction),
        text(&|r| &r.input),
        text(&|r| &r.output),
        Arc::new(messages),
        text(&|r| &r.reasoning),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| TrainerError::Invalid(format!("record batch: {e}")))
}

/// A Parquet file being written.
pub struct ParquetFile<W: Write + Send> {
    path: PathBuf,
    writer: ArrowWriter<W>,
}

impl<W: Write + Send> ParquetFile<W> {
    pub fn new(path: &Path, sink: W) -> Result<Self, TrainerError> {
        let writer = ArrowWriter::try_new(sink, schema(), Some(properties())).map_err(|e| perr(path, e))?;
        Ok(Self { path: path.to_path_buf(), writer })
    }

    pub fn write(&mut self, rows: &[&StudentExample]) -> Result<(), TrainerError> {
        for chunk in rows.chunks(BATCH_ROWS) {
            let batch = batch(chunk)?;
            self.writer.write(&batch).map_err(|e| perr(&self.path, e))?;
        }
        Ok(())
    }

    /// Writes the footer and hands the sink back.
    pub fn finish(self) -> Result<W, TrainerError> {
        let path = self.path;
        self.writer.into_inner().map_err(|e| perr(&path, e))
    }
}

fn perr(path: &Path, e: impl std::fmt::Display) -> TrainerError {
    TrainerError::Parquet { path: path.to_path_buf(), message: e.to_string() }
}
