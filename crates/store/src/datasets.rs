//! Dataset versions: ingest and reads.

use crate::error::StoreError;
use crate::pool::Store;
use futures::{Stream, TryStreamExt};
use reasonrec_core::data::{DatasetHeader, Family, Interaction, NewDataset};

/// What an ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// A new version was written.
    Created { dataset_id: i64, version: i32 },
    /// The same content was already ingested under this name: nothing was written.
    Unchanged { dataset_id: i64, version: i32 },
}

impl IngestOutcome {
    pub fn dataset_id(&self) -> i64 {
        match *self {
            IngestOutcome::Created { dataset_id, .. } | IngestOutcome::Unchanged { dataset_id, .. } => dataset_id,
        }
    }
}

/// One dataset version as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: i64,
    pub name: String,
    pub version: i32,
    pub format: String,
    pub family: Family,
    pub content_hash: String,
    pub n_users: i32,
    pub n_items: i32,
    pub n_interactions: i64,
}

/// The columns of a [`DatasetRow`], read by name.
const DATASET_COLUMNS: &str = "id, name, version, format, family, content_hash, n_users, n_items, n_interactions";

/// Escapes one field for COPY's text format.
fn copy_field(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

const COPY_CHUNK: usize = 1 << 20;

/// Dataset versions: ingest, lookup, interaction streams. Reached through [`Store::datasets`].
#[derive(Debug, Clone, Copy)]
pub struct Datasets<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Datasets<'a> {
    /// Writes a dataset version in one transaction: either all of it is stored or nothing.
    pub async fn ingest(self, ds: &NewDataset) -> Result<IngestOutcome, StoreError> {
        self.ingest_with_progress(ds, &mut |_| {}).await
    }

    /// [`Datasets::ingest`], calling `progress` with the number of rows sent so far
    /// (interactions, then users and items). The dataset in memory is fed to
    /// [`Datasets::ingest_stream`], the one writer.
    pub async fn ingest_with_progress(
        self,
        ds: &NewDataset,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<IngestOutcome, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feed = async move {
            // A send fails only when the writer stopped (unchanged, or an error it reports).
            if tx.send(IngestMessage::Start(ds.header())).await.is_err() {
                return;
            }
            for chunk in ds.interactions.chunks(STREAM_CHUNK) {
                if tx.send(IngestMessage::Rows(chunk.to_vec())).await.is_err() {
                    return;
                }
            }
            let rest = NewDataset {
                name: ds.name.clone(),
                format: ds.format.clone(),
                family: ds.family,
                content_hash: ds.content_hash.clone(),
                source: ds.source.clone(),
                users: ds.users.clone(),
                items: ds.items.clone(),
                interactions: Vec::new(),
            };
            let _ = tx.send(IngestMessage::Finish { dataset: Box::new(rest), deduplicated: true }).await;
        };
        let (_, outcome) = tokio::join!(feed, self.ingest_stream(rx, progress));
        outcome
    }

    /// Writes a dataset version from a stream, in one transaction: the header first (an
    /// unchanged content hash stops here, writing nothing), interactions as they come, then
    /// users and items; exact repeats of (user, item, time) are dropped here unless the loader
    /// did it, keeping the first stored. A stream that ends before `Finish` stores nothing.
    pub async fn ingest_stream(
        self,
        mut rx: tokio::sync::mpsc::Receiver<IngestMessage>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<IngestOutcome, StoreError> {
        let Some(IngestMessage::Start(h)) = rx.recv().await else {
            return Err(StoreError::Aborted("the loader stopped before announcing the dataset".into()));
        };
        let mut tx = self.store.pool().begin().await?;
        // Serialise concurrent ingests of one name so versions stay dense and hashes unique.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7701))").bind(&h.name).execute(&mut *tx).await?;
        if let Some((dataset_id, version)) =
            sqlx::query_as::<_, (i64, i32)>("SELECT id, version FROM datasets WHERE name = $1 AND content_hash = $2")
                .bind(&h.name)
                .bind(&h.content_hash)
                .fetch_optional(&mut *tx)
                .await?
        {
            tx.rollback().await?;
            return Ok(IngestOutcome::Unchanged { dataset_id, version });
        }
        let version: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM datasets WHERE name = $1")
            .bind(&h.name)
            .fetch_one(&mut *tx)
            .await?;
        // Counts and source are written once the rows are in.
        let dataset_id: i64 = sqlx::query_scalar(
            "INSERT INTO datasets (name, version, format, family, content_hash, source, n_users, n_items, n_interactions)
             VALUES ($1, $2, $3, $4, $5, $6, 0, 0, 0) RETURNING id",
        )
        .bind(&h.name)
        .bind(version)
        .bind(&h.format)
        .bind(h.family)
        .bind(&h.content_hash)
        .bind(&h.source)
        .fetch_one(&mut *tx)
        .await?;
        let id = dataset_id.to_string();

        let mut sent = 0u64;
        let (ds, deduplicated) = loop {
            match rx.recv().await {
                Some(IngestMessage::Rows(rows)) => copy_interactions(&mut tx, &id, &rows, &mut sent, progress).await?,
                Some(IngestMessage::Finish { dataset, deduplicated }) => break (dataset, deduplicated),
                Some(IngestMessage::Start(_)) => return Err(StoreError::Corrupt("a second dataset header".into())),
                None => return Err(StoreError::Aborted("the loader stopped; nothing was stored".into())),
            }
        };
        let interactions = sent;
        copy_users_and_items(&mut tx, &id, &ds, &mut sent, progress).await?;
        let dropped = if deduplicated { 0 } else { drop_repeats(&mut tx, dataset_id).await? };
        let mut source = ds.source.clone();
        let before = source["duplicates_dropped"].as_u64().unwrap_or(0);
        source["duplicates_dropped"] = serde_json::json!(before + dropped);
        sqlx::query("UPDATE datasets SET n_users = $2, n_items = $3, n_interactions = $4, source = $5 WHERE id = $1")
            .bind(dataset_id)
            .bind(ds.users.len() as i32)
            .bind(ds.items.len() as i32)
            .bind((interactions - dropped) as i64)
            .bind(&source)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(IngestOutcome::Created { dataset_id, version })
    }

    /// The newest version of a dataset, or a given one.
    pub async fn find(self, name: &str, version: Option<i32>) -> Result<DatasetRow, StoreError> {
        let row = sqlx::query_as::<_, DatasetRow>(&format!(
            "SELECT {DATASET_COLUMNS} FROM datasets WHERE name = $1 AND ($2::int IS NULL OR version = $2)
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(name)
        .bind(version)
        .fetch_optional(self.store.pool())
        .await?;
        row.ok_or_else(|| {
            StoreError::NotFound(match version {
                Some(v) => format!("dataset {name:?} version {v}"),
                None => format!("dataset {name:?} (run `reasonrec ingest` first)"),
            })
        })
    }

    /// The dataset row of a dataset version by id.
    pub async fn by_id(self, dataset_id: i64) -> Result<DatasetRow, StoreError> {
        sqlx::query_as::<_, DatasetRow>(&format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE id = $1"))
            .bind(dataset_id)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("dataset id {dataset_id}")))
    }

    /// All interactions of a dataset ordered by user, then time, then item: the order planning
    /// needs. Streams rows; never loads the table whole.
    pub fn stream_interactions(
        self,
        dataset_id: i64,
    ) -> impl Stream<Item = Result<Interaction, StoreError>> + Send + 'a {
        sqlx::query_as::<_, (i32, i32, f32, i64)>(
            "SELECT user_id, item_id, rating, ts FROM interactions WHERE dataset_id = $1
             ORDER BY user_id, ts, item_id",
        )
        .bind(dataset_id)
        .fetch(self.store.pool())
        .map_err(StoreError::from)
        .map_ok(|(user_id, item_id, rating, ts)| Interaction { user_id, item_id, rating, ts, review: None })
    }

    /// Deletes a dataset version (users, items, interactions). Refused by the database while a run
    /// refers to it.
    pub async fn delete(self, dataset_id: i64) -> Result<(), StoreError> {
        let mut tx = self.store.pool().begin().await?;
        // Interactions carry no foreign keys (bulk-load speed, sql/0003): delete them explicitly.
        sqlx::query("DELETE FROM interactions WHERE dataset_id = $1").bind(dataset_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM datasets WHERE id = $1").bind(dataset_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// (rating, count) over a dataset's interactions, ascending by rating.
    pub async fn rating_histogram(self, dataset_id: i64) -> Result<Vec<(f32, i64)>, StoreError> {
        Ok(sqlx::query_as("SELECT rating, count(*) FROM interactions WHERE dataset_id = $1 GROUP BY 1 ORDER BY 1")
            .bind(dataset_id)
            .fetch_all(self.store.pool())
            .await?)
    }
}

/// Interactions sent to a streaming ingest at a time from memory.
const STREAM_CHUNK: usize = 20_000;

/// What [`Datasets::ingest_stream`] receives: `Start`, any number of `Rows`, then `Finish` with the
/// users, items and source (its `interactions` are not read). `deduplicated`: the loader
/// already dropped exact repeats.
#[derive(Debug)]
pub enum IngestMessage {
    Start(DatasetHeader),
    Rows(Vec<Interaction>),
    Finish { dataset: Box<NewDataset>, deduplicated: bool },
}

async fn copy_interactions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &str,
    rows: &[Interaction],
    sent: &mut u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), StoreError> {
    copy_rows(
        tx,
        "COPY interactions (dataset_id, user_id, item_id, rating, ts, review) FROM STDIN",
        rows,
        sent,
        progress,
        |out, r: &Interaction| {
            use std::fmt::Write;
            let _ = write!(out, "{id}\t{}\t{}\t{}\t{}\t", r.user_id, r.item_id, r.rating, r.ts);
            match &r.review {
                Some(v) => copy_field(out, &v.to_string()),
                None => out.push_str("\\N"),
            }
        },
    )
    .await
}

async fn copy_users_and_items(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &str,
    ds: &NewDataset,
    sent: &mut u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), StoreError> {
    copy_rows(tx, "COPY users (dataset_id, id, ext_id, attrs) FROM STDIN", &ds.users, sent, progress, |out, u| {
        out.push_str(id);
        out.push('\t');
        out.push_str(&u.id.to_string());
        out.push('\t');
        copy_field(out, &u.ext_id);
        out.push('\t');
        copy_field(out, &u.attrs.to_string());
    })
    .await?;
    copy_rows(
        tx,
        "COPY items (dataset_id, id, ext_id, title, attrs) FROM STDIN",
        &ds.items,
        sent,
        progress,
        |out, i| {
            out.push_str(id);
            out.push('\t');
            out.push_str(&i.id.to_string());
            out.push('\t');
            copy_field(out, &i.ext_id);
            out.push('\t');
            copy_field(out, &i.title);
            out.push('\t');
            copy_field(out, &i.attrs.to_string());
        },
    )
    .await
}

/// Deletes exact repeats of (user, item, time) in a dataset being written, keeping the first
/// stored (COPY appends in file order); returns how many went.
async fn drop_repeats(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, dataset_id: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "WITH ranked AS (
             SELECT ctid, row_number() OVER (PARTITION BY user_id, item_id, ts ORDER BY ctid) AS n
             FROM interactions WHERE dataset_id = $1
         )
         DELETE FROM interactions i USING ranked r
         WHERE i.dataset_id = $1 AND i.ctid = r.ctid AND r.n > 1",
    )
    .bind(dataset_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

async fn copy_rows<T>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    statement: &str,
    rows: &[T],
    sent: &mut u64,
    progress: &mut (dyn FnMut(u64) + Send),
    mut write_row: impl FnMut(&mut String, &T),
) -> Result<(), StoreError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    let mut buf = String::with_capacity(COPY_CHUNK + 4096);
    let mut rows = rows.iter().peekable();
    while let Some(row) = rows.next() {
        write_row(&mut buf, row);
        buf.push('\n');
        *sent += 1;
        if buf.len() >= COPY_CHUNK || rows.peek().is_none() {
            if let Err(e) = copy.send(buf.as_bytes()).await {
                let _ = copy.abort("reasonrec ingest failed").await;
                return Err(e.into());
            }
            buf.clear();
            progress(*sent);
        }
    }
    copy.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::copy_field;

    #[test]
    fn copy_escapes_specials() {
        let mut s = String::new();
        copy_field(&mut s, "a\tb\\c\nd\re");
        assert_eq!(s, "a\\tb\\\\c\\nd\\re");
    }
}
