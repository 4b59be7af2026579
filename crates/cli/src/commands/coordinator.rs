//! `coordinator`: the long-running coordinator. One replica acts (leadership by advisory
//! lock); it serves every running run through the reconnecting outbox loop, fires the
//! scheduled incremental runs (`[[schedule.jobs]]`), and serves the status page with
//! `/metrics`, `/healthz` and `/readyz`.

use super::connect_store;
use anyhow::Context;
use reasonrec_coordinator::leader::{COORDINATOR_LOCK, acquire};
use reasonrec_coordinator::{Target, supervise};
use reasonrec_core::Settings;
use reasonrec_store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn coordinator(settings: &Settings) -> anyhow::Result<ExitCode> {
    let token = status_token(settings)?;
    let jobs = reasonrec_coordinator::schedule::parse_jobs(settings)?;
    let store = connect_store(settings).await?;
    store.migrate().await?;
    let stop = crate::signals::shutdown_token();
    let leading = Arc::new(AtomicBool::new(false));
    serve_http(settings, &store, token, leading.clone(), stop.clone()).await?;
    while !stop.is_cancelled() {
        let Some(leadership) = acquire(&settings.database.url, COORDINATOR_LOCK, Duration::from_secs(5), &stop).await?
        else {
            break;
        };
        leading.store(true, Ordering::Relaxed);
        let lost = CancellationToken::new();
        let hold = tokio::spawn(leadership.hold(Duration::from_secs(5), lost.clone(), stop.clone()));
        tracing::info!(scheduled_jobs = jobs.len(), "coordinator serving running runs");
        let scheduler = {
            let (store, settings, jobs, lost) = (store.clone(), settings.clone(), jobs.clone(), lost.clone());
            tokio::spawn(
                async move { reasonrec_coordinator::schedule::run_scheduler(&store, &settings, &jobs, lost).await },
            )
        };
        let served = supervise(&store, settings, Target::AllRuns, lost.clone()).await;
        lost.cancel();
        let _ = scheduler.await;
        served?;
        leading.store(false, Ordering::Relaxed);
        lost.cancel();
        let _ = hold.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The status page's token: required (from `coordinator.status_token_env`) when the endpoint
/// is bound beyond loopback.
fn status_token(settings: &Settings) -> anyhow::Result<Option<String>> {
    let c = &settings.coordinator;
    if c.http_bind.is_empty() || reasonrec_ops::is_loopback(&c.http_bind) {
        return Ok(None);
    }
    let token = std::env::var(&c.status_token_env).ok().filter(|t| !t.trim().is_empty());
    token.map(Some).with_context(|| {
        format!(
            "coordinator.http_bind = {:?} is beyond loopback: set the status page token in ${} \
             (coordinator.status_token_env)",
            c.http_bind, c.status_token_env
        )
    })
}

async fn serve_http(
    settings: &Settings,
    store: &Store,
    token: Option<String>,
    leading: Arc<AtomicBool>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let bind = settings.coordinator.http_bind.clone();
    if bind.is_empty() {
        return Ok(());
    }
    let ready_store = store.clone();
    // Ready = Postgres answers; a standby is ready too (it is healthy, just not acting).
    let ready: reasonrec_ops::ReadyCheck = Arc::new(move || {
        let store = ready_store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("postgres: {e}")) })
    });
    let app = reasonrec_coordinator::web::router(store.clone(), token, ready, leading);
    let addr = reasonrec_ops::serve(&bind, app, stop).await.with_context(|| format!("binding {bind}"))?;
    tracing::info!(%addr, "status page, /metrics, /healthz, /readyz");
    Ok(())
}
