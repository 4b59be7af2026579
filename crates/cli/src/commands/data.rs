//! `migrate`, `ingest`, `dataset generate`.

use super::connect_store;
use crate::cli::{GenerateArgs, IngestArgs, StatsArgs};
use anyhow::{Context, bail};
use futures::TryStreamExt;
use reasonrec_core::Settings;
use reasonrec_core::data::{DatasetHeader, Interaction};
use reasonrec_core::settings::redact_url;
use reasonrec_dataset::generate::{GenerateSpec, generate_ml1m};
use reasonrec_dataset::{DatasetError, InteractionSink};
use reasonrec_store::Store;
use reasonrec_store::datasets::{IngestMessage, IngestOutcome};
use std::process::ExitCode;
use std::time::Instant;

pub async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let created = reasonrec_store::Store::create_database_if_missing(&settings.database)
        .await
        .with_context(|| format!("checking the database at {}", redact_url(&settings.database.url)))?;
    if created {
        println!("created database {}", redact_url(&settings.database.url));
    }
    let store = connect_store(settings).await?;
    store.migrate().await.context("applying migrations")?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

/// Hands a streaming loader's batches to the database writer (bounded: the loader waits while
/// four batches are queued, so memory holds users, items and a few batches).
struct ToWriter(tokio::sync::mpsc::Sender<IngestMessage>);

impl InteractionSink for ToWriter {
    fn start(&mut self, header: DatasetHeader) -> Result<(), DatasetError> {
        self.0.blocking_send(IngestMessage::Start(header)).map_err(|_| DatasetError::SinkClosed)
    }
    fn rows(&mut self, rows: Vec<Interaction>) -> Result<(), DatasetError> {
        self.0.blocking_send(IngestMessage::Rows(rows)).map_err(|_| DatasetError::SinkClosed)
    }
}

pub async fn ingest(settings: &Settings, a: IngestArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let (outcome, source) = ingest_files(&store, &a).await?;
    let (verb, id, version) = match outcome {
        IngestOutcome::Created { dataset_id, version } => ("ingested", dataset_id, version),
        IngestOutcome::Unchanged { dataset_id, version } => ("unchanged", dataset_id, version),
    };
    let row = store.datasets().find(&a.dataset, Some(version)).await?;
    let ds = IngestedSummary {
        name: row.name,
        users: row.n_users,
        items: row.n_items,
        interactions: row.n_interactions,
        content_hash: row.content_hash,
        source,
    };
    // Files that were not UTF-8 and were read as Latin-1 (MovieLens `.dat` / `u.*` only).
    let latin1: Vec<&str> = ds.source["files"]
        .as_array()
        .map(|files| files.iter().filter(|f| f["latin1"] == true).filter_map(|f| f["file"].as_str()).collect())
        .unwrap_or_default();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "outcome": verb, "dataset": ds.name, "dataset_id": id, "version": version,
                "users": ds.users, "items": ds.items, "interactions": ds.interactions,
                "content_hash": ds.content_hash, "seconds": t0.elapsed().as_secs_f64(),
                "latin1_files": latin1,
            })
        );
    } else {
        println!(
            "{verb}: dataset {:?} version {version} ({} users, {} items, {} interactions) in {:.2} s",
            ds.name,
            ds.users,
            ds.items,
            ds.interactions,
            t0.elapsed().as_secs_f64(),
        );
        if !latin1.is_empty() {
            println!("  not UTF-8, read as Latin-1 (windows-1252): {}", latin1.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses the files on a thread of their own while their rows go to Postgres as they are
/// parsed; the outcome and the source's description (files, sizes, encodings).
async fn ingest_files(store: &Store, a: &IngestArgs) -> anyhow::Result<(IngestOutcome, serde_json::Value)> {
    let (path, format, name) = (a.path.clone(), a.format.clone(), a.dataset.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let parser = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, DatasetError> {
        let ds = reasonrec_dataset::load_streaming(&format, &path, &name, Box::new(ToWriter(tx.clone())))?;
        let source = ds.source.clone();
        tx.blocking_send(IngestMessage::Finish { dataset: Box::new(ds), deduplicated: false })
            .map_err(|_| DatasetError::SinkClosed)?;
        Ok(source)
    });
    let bar = progress_bar(&a.path);
    let written = store.datasets().ingest_stream(rx, &mut |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let parsed = parser.await.context("loader task")?;
    match (written, parsed) {
        // Unchanged: the writer stopped the loader on purpose.
        (Ok(o @ IngestOutcome::Unchanged { .. }), _) => Ok((o, serde_json::Value::Null)),
        (Ok(o), Ok(source)) => Ok((o, source)),
        // The loader's error is the cause; the writer only saw the stream end.
        (_, Err(e)) if !matches!(e, DatasetError::SinkClosed) => {
            Err(anyhow::Error::new(e).context("nothing of the dataset was stored"))
        }
        (Err(e), _) => Err(anyhow::Error::new(e).context("writing the dataset (nothing of it was stored)")),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// A spinner counting the rows written from `path`.
fn progress_bar(path: &std::path::Path) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} ingesting {path}: {pos} rows written ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
            .with_key("path", {
                let shown = path.display().to_string();
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&shown);
                }
            }),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// What the ingest summary prints, read back from the stored dataset row.
struct IngestedSummary {
    name: String,
    users: i32,
    items: i32,
    interactions: i64,
    content_hash: String,
    source: serde_json::Value,
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let spec = GenerateSpec {
        users: a.users,
        items: a.items,
        min_ratings: a.min_ratings,
        max_ratings: a.max_ratings,
        seed: a.seed,
    };
    let g = match a.format.as_str() {
        "ml-1m" => generate_ml1m(&a.out, spec)?,
        "amazon" => reasonrec_dataset::generate::generate_amazon(&a.out, spec)?,
        other => bail!("dataset generate: format {other:?} is not supported (supported: ml-1m, amazon)"),
    };
    println!("wrote {} users, {} items, {} ratings to {}", g.users, g.items, g.ratings, a.out.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(settings: &Settings, a: StatsArgs) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let ds = store.datasets().find(&a.dataset, a.version).await?;
    let histogram = store.datasets().rating_histogram(ds.id).await?;
    let threshold = settings.sampling.like_threshold;
    let total: i64 = histogram.iter().map(|(_, n)| n).sum();
    let likes: i64 = histogram.iter().filter(|(r, _)| *r > threshold).map(|(_, n)| n).sum();
    let pairs: Vec<(i32, i32)> =
        store.datasets().stream_interactions(ds.id).map_ok(|r| (r.user_id, r.item_id)).try_collect().await?;
    let kcores: Vec<_> = [5, 10, 20].into_iter().map(|k| reasonrec_dataset::stats::kcore(&pairs, k)).collect();
    let like_share = if total > 0 { likes as f64 / total as f64 } else { 0.0 };
    if a.json {
        let hist: Vec<_> = histogram.iter().map(|(r, n)| serde_json::json!({"rating": r, "count": n})).collect();
        println!(
            "{}",
            serde_json::json!({
                "dataset": ds.name, "version": ds.version, "format": ds.format, "family": ds.family,
                "users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions,
                "rating_histogram": hist, "like_threshold": threshold, "like_share": like_share, "k_cores": kcores,
            })
        );
    } else {
        println!("dataset {:?} v{} ({}, {})", ds.name, ds.version, ds.format, ds.family);
        println!("  users {}  items {}  interactions {}", ds.n_users, ds.n_items, ds.n_interactions);
        let parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        println!("  ratings  {}", parts.join("  "));
        println!("  like share (rating > {threshold}) {:.1} %", like_share * 100.0);
        for c in kcores {
            println!("  {}-core: {} users, {} items, {} interactions", c.k, c.users, c.items, c.interactions);
        }
    }
    Ok(ExitCode::SUCCESS)
}
