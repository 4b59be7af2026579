//! The coordinator as a long-running service: the outbox loop wrapped in reconnection.
//!
//! A lost broker connection or a Postgres restart ends one outbox session with a retryable
//! error; a new session (new connection, topology declared again) starts after a backoff of
//! 200 ms doubling to 10 s. Nothing is lost in between: Postgres says what is ready, and a
//! publish whose confirm never came stays `ready` and is published again.

use crate::error::CoordinatorError;
use crate::outbox::Outbox;
use reasonrec_core::Settings;
use reasonrec_core::stage::RunState;
use reasonrec_queue::Broker;
use reasonrec_queue::session::reconnecting;
use reasonrec_store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a supervised coordinator works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every running run, until stopped (`reasonrec coordinator`).
    AllRuns,
    /// One run until it is completed or cancelled (`run create --wait`).
    Run(Uuid),
}

/// Runs the outbox for `target` until it is done or `stop` is cancelled, reconnecting on
/// retryable errors. Returns the run's final state for [`Target::Run`] (None when stopped).
pub async fn supervise(
    store: &Store,
    settings: &Settings,
    target: Target,
    stop: CancellationToken,
) -> Result<Option<RunState>, CoordinatorError> {
    let poll = Duration::from_millis(settings.coordinator.poll_interval_ms);
    let ended = |e: &CoordinatorError, wait: Duration| {
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "coordinator session ended; reconnecting");
    };
    let state =
        reconnecting(&stop, CoordinatorError::is_retryable, ended, || session(store, settings, target, poll, &stop))
            .await?;
    Ok(state.flatten())
}

async fn session(
    store: &Store,
    settings: &Settings,
    target: Target,
    poll: Duration,
    stop: &CancellationToken,
) -> Result<Option<RunState>, CoordinatorError> {
    let broker = Broker::connect(&settings.broker, "reasonrec-coordinator").await?;
    let result = async {
        let outbox = Outbox::configured(store.clone(), &broker, &settings.coordinator).await?;
        match target {
            Target::AllRuns => outbox.serve(poll, stop.cancelled()).await.map(|()| None),
            Target::Run(run_id) => tokio::select! {
                r = outbox.drive(run_id, poll) => r.map(Some),
                _ = stop.cancelled() => Ok(None),
            },
        }
    }
    .await;
    broker.close().await;
    result
}
