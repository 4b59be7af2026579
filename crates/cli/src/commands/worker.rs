//! `worker`.

use super::connect_store;
use crate::cli::WorkerArgs;
use anyhow::Context;
use reasonrec_core::{PromptLibrary, Settings};
use reasonrec_teacher::TeacherPool;
use reasonrec_worker::{ProcessorOptions, TaskProcessor, WorkerConfig, WorkerCounters, run_worker};
use std::process::ExitCode;
use std::sync::Arc;

pub async fn worker(mut settings: Settings, a: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(c) = a.concurrency {
        settings.worker.concurrency = c.max(1);
    }
    let name = a.name.unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let prompts = PromptLibrary::load(&settings.prompts.dir)
        .with_context(|| format!("loading prompt templates from {}", settings.prompts.dir.display()))?;
    let teacher = TeacherPool::new(&settings.teacher)?;
    let store = connect_store(&settings).await?;
    // Workers never migrate; they refuse to start on an old schema.
    store.ensure_migrated().await?;
    let processor = TaskProcessor::new(store, teacher, Arc::new(prompts), ProcessorOptions::from_settings(&settings));
    let counters = Arc::new(WorkerCounters::default());
    let stop = crate::signals::shutdown_token();
    tracing::info!(worker = %name, concurrency = settings.worker.concurrency, "worker starting");
    let cfg = WorkerConfig {
        processor,
        broker: settings.broker.clone(),
        worker: settings.worker.clone(),
        name: name.clone(),
        lease_interval: settings.teacher.lease_interval(),
    };
    run_worker(cfg, stop, counters.clone()).await?;
    tracing::info!(worker = %name, counters = %counters.snapshot(), "worker stopped");
    Ok(ExitCode::SUCCESS)
}
