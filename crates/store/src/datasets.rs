//! Dataset versions: ingest and reads.

use crate::error::StoreError;
use crate::pool::Store;
use futures::{Stream, TryStreamExt};
use reasonrec_core::data::{Family, Interaction, NewDataset};
use sqlx::Row;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRow {
    pub id: i64,
    pub name: String,
    pub version: i32,
    pub format: String,
    pub family: String,
    pub content_hash: String,
    pub n_users: i32,
    pub n_items: i32,
    pub n_interactions: i64,
}

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

impl Store {
    /// Writes a dataset version in one transaction: either all of it is stored or nothing.
    pub async fn ingest_dataset(&self, ds: &NewDataset) -> Result<IngestOutcome, StoreError> {
        self.ingest_dataset_with_progress(ds, &mut |_| {}).await
    }

    /// [`Store::ingest_dataset`], calling `progress` with the number of rows sent so far
    /// (users, then items, then interactions).
    pub async fn ingest_dataset_with_progress(
        &self,
        ds: &NewDataset,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<IngestOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Serialise concurrent ingests of one name so versions stay dense and hashes unique.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7701))")
            .bind(&ds.name)
            .execute(&mut *tx)
            .await?;
        if let Some(row) = sqlx::query("SELECT id, version FROM datasets WHERE name = $1 AND content_hash = $2")
            .bind(&ds.name)
            .bind(&ds.content_hash)
            .fetch_optional(&mut *tx)
            .await?
        {
            tx.rollback().await?;
            return Ok(IngestOutcome::Unchanged { dataset_id: row.try_get(0)?, version: row.try_get(1)? });
        }
        let version: i32 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM datasets WHERE name = $1")
            .bind(&ds.name)
            .fetch_one(&mut *tx)
            .await?;
        let dataset_id: i64 = sqlx::query_scalar(
            "INSERT INTO datasets (name, version, format, family, content_hash, source, n_users, n_items, n_interactions)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(&ds.name)
        .bind(version)
        .bind(&ds.format)
        .bind(ds.family.as_str())
        .bind(&ds.content_hash)
        .bind(&ds.source)
        .bind(ds.users.len() as i32)
        .bind(ds.items.len() as i32)
        .bind(ds.interactions.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        let id = dataset_id.to_string();

        let mut sent = 0u64;
        copy_rows(
            &mut tx,
            "COPY users (dataset_id, id, ext_id, attrs) FROM STDIN",
            &ds.users,
            &mut sent,
            progress,
            |out, u| {
                out.push_str(&id);
                out.push('\t');
                out.push_str(&u.id.to_string());
                out.push('\t');
                copy_field(out, &u.ext_id);
                out.push('\t');
                copy_field(out, &u.attrs.to_string());
            },
        )
        .await?;
        copy_rows(
            &mut tx,
            "COPY items (dataset_id, id, ext_id, title, attrs) FROM STDIN",
            &ds.items,
            &mut sent,
            progress,
            |out, i| {
                out.push_str(&id);
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
        .await?;
        copy_rows(
            &mut tx,
            "COPY interactions (dataset_id, user_id, item_id, rating, ts, review) FROM STDIN",
            &ds.interactions,
            &mut sent,
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
        .await?;
        tx.commit().await?;
        Ok(IngestOutcome::Created { dataset_id, version })
    }

    /// The newest version of a dataset, or a given one.
    pub async fn find_dataset(&self, name: &str, version: Option<i32>) -> Result<DatasetRow, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, version, format, family, content_hash, n_users, n_items, n_interactions
             FROM datasets WHERE name = $1 AND ($2::int IS NULL OR version = $2)
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else {
            return Err(StoreError::NotFound(match version {
                Some(v) => format!("dataset {name:?} version {v}"),
                None => format!("dataset {name:?} (run `reasonrec ingest` first)"),
            }));
        };
        Ok(DatasetRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            version: r.try_get("version")?,
            format: r.try_get("format")?,
            family: r.try_get("family")?,
            content_hash: r.try_get("content_hash")?,
            n_users: r.try_get("n_users")?,
            n_items: r.try_get("n_items")?,
            n_interactions: r.try_get("n_interactions")?,
        })
    }

    /// All interactions of a dataset ordered by user, then time, then item: the order planning
    /// needs. Streams rows; never loads the table whole.
    pub fn stream_interactions(
        &self,
        dataset_id: i64,
    ) -> impl Stream<Item = Result<Interaction, StoreError>> + Send + '_ {
        sqlx::query(
            "SELECT user_id, item_id, rating, ts FROM interactions WHERE dataset_id = $1
             ORDER BY user_id, ts, item_id",
        )
        .bind(dataset_id)
        .fetch(self.pool())
        .map_err(StoreError::from)
        .and_then(|r| async move {
            Ok(Interaction {
                user_id: r.try_get(0)?,
                item_id: r.try_get(1)?,
                rating: r.try_get(2)?,
                ts: r.try_get(3)?,
                review: None,
            })
        })
    }

    /// Deletes a dataset version (users, items, interactions). Refused by the database while a run
    /// refers to it.
    pub async fn delete_dataset(&self, dataset_id: i64) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        // Interactions carry no foreign keys (bulk-load speed, sql/0003): delete them explicitly.
        sqlx::query("DELETE FROM interactions WHERE dataset_id = $1").bind(dataset_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM datasets WHERE id = $1").bind(dataset_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// (rating, count) over a dataset's interactions, ascending by rating.
    pub async fn rating_histogram(&self, dataset_id: i64) -> Result<Vec<(f32, i64)>, StoreError> {
        let rows = sqlx::query("SELECT rating, count(*) FROM interactions WHERE dataset_id = $1 GROUP BY 1 ORDER BY 1")
            .bind(dataset_id)
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Family of a stored dataset, for template selection.
    pub fn parse_family(name: &str) -> Result<Family, StoreError> {
        match name {
            "movielens" => Ok(Family::Movielens),
            "amazon" => Ok(Family::Amazon),
            "generic" => Ok(Family::Generic),
            other => Err(StoreError::Corrupt(format!("unknown dataset family {other:?}"))),
        }
    }
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
