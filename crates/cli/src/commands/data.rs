//! `migrate`, `ingest`, `dataset generate`.

use super::connect_store;
use crate::cli::{GenerateArgs, IngestArgs};
use anyhow::{Context, bail};
use reasonrec_core::Settings;
use reasonrec_core::settings::redact_url;
use reasonrec_dataset::generate::{GenerateSpec, generate_ml1m};
use reasonrec_store::datasets::IngestOutcome;
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

pub async fn ingest(settings: &Settings, a: IngestArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let path = a.path.clone();
    let (format, name) = (a.format.clone(), a.dataset.clone());
    // Parsing is CPU work on whole files: keep it off the async threads.
    let ds = tokio::task::spawn_blocking(move || reasonrec_dataset::load(&format, &path, &name))
        .await
        .context("loader task")??;
    let parsed = t0.elapsed();
    let store = connect_store(settings).await?;
    store.ensure_migrated().await?;
    let outcome = store.ingest_dataset(&ds).await.context("writing the dataset")?;
    let (verb, id, version) = match outcome {
        IngestOutcome::Created { dataset_id, version } => ("ingested", dataset_id, version),
        IngestOutcome::Unchanged { dataset_id, version } => ("unchanged", dataset_id, version),
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "outcome": verb, "dataset": ds.name, "dataset_id": id, "version": version,
                "users": ds.users.len(), "items": ds.items.len(), "interactions": ds.interactions.len(),
                "content_hash": ds.content_hash, "seconds": t0.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "{verb}: dataset {:?} version {version} ({} users, {} items, {} interactions) in {:.2} s (parse {:.2} s)",
            ds.name,
            ds.users.len(),
            ds.items.len(),
            ds.interactions.len(),
            t0.elapsed().as_secs_f64(),
            parsed.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    if a.format != "ml-1m" {
        bail!("dataset generate: format {:?} is not supported (supported: ml-1m)", a.format);
    }
    let spec = GenerateSpec {
        users: a.users,
        items: a.items,
        min_ratings: a.min_ratings,
        max_ratings: a.max_ratings,
        seed: a.seed,
    };
    let g = generate_ml1m(&a.out, spec)?;
    println!("wrote {} users, {} items, {} ratings to {}", g.users, g.items, g.ratings, a.out.display());
    Ok(ExitCode::SUCCESS)
}
