//! `worker`.

use super::connect_store;
use crate::cli::WorkerArgs;
use anyhow::Context;
use reasonrec_core::Settings;
use reasonrec_worker::{Worker, WorkerCounters};
use std::process::ExitCode;
use std::sync::Arc;

pub async fn worker(mut settings: Settings, a: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(c) = a.concurrency {
        settings.worker.concurrency = c.max(1);
    }
    // The name keys this worker's endpoint leases: it must differ between workers, also in
    // containers where every process is pid 1.
    let name = a.name.unwrap_or_else(|| format!("worker-{}-{}", hostname(), std::process::id()));
    let store = connect_store(&settings).await?;
    // Workers never migrate; they refuse to start on an old schema.
    store.ensure_migrated().await?;
    let worker = Worker::build(store.clone(), &settings, name.clone()).context("building the worker")?;
    let stop = crate::signals::shutdown_token();
    let counters = Arc::new(WorkerCounters::default());
    serve_ops(&settings.metrics.bind, store, worker.consumes(), counters.clone(), stop.clone()).await;
    tracing::info!(worker = %name, concurrency = settings.worker.concurrency, "worker starting");
    worker.run(stop, counters.clone()).await?;
    tracing::info!(worker = %name, counters = %counters.snapshot(), "worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Serves `/metrics`, `/healthz` and `/readyz` (ready = consuming, unless the worker works
/// batches only, and Postgres answers). A port already taken is not fatal: several workers may
/// share a machine.
async fn serve_ops(
    bind: &str,
    store: reasonrec_store::Store,
    consumes: bool,
    counters: Arc<WorkerCounters>,
    stop: tokio_util::sync::CancellationToken,
) {
    if bind.is_empty() {
        return;
    }
    let ready: reasonrec_ops::ReadyCheck = Arc::new(move || {
        let (store, counters) = (store.clone(), counters.clone());
        Box::pin(async move {
            if consumes && !counters.connected.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("not consuming (broker session down)".to_string());
            }
            store.ping().await.map_err(|e| format!("postgres: {e}"))
        })
    });
    match reasonrec_ops::serve(bind, reasonrec_ops::router(ready), stop).await {
        Ok(addr) => tracing::info!(%addr, "serving /metrics, /healthz, /readyz"),
        Err(e) => tracing::warn!(bind, error = %e, "cannot serve /metrics; running without it"),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
