//! The coordinator as a long-running service: [`serve`] (leadership, the scheduler and the
//! supervised outbox: what `reasonrec coordinator` runs, and the tests with it) and
//! [`supervise`], the outbox loop wrapped in reconnection.
//!
//! A lost broker connection or a Postgres restart ends one outbox session with a retryable
//! error; a new session (new connection, topology declared again) starts after a backoff of
//! 200 ms doubling to 10 s. Nothing is lost in between: Postgres says what is ready, and a
//! publish whose confirm never came stays `ready` and is published again.

use crate::error::CoordinatorError;
use crate::leader::{COORDINATOR_LOCK, acquire};
use crate::outbox::Outbox;
use crate::schedule::{Job, run_scheduler};
use reasonrec_core::Settings;
use reasonrec_core::stage::RunState;
use reasonrec_queue::Broker;
use reasonrec_queue::session::reconnecting;
use reasonrec_store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How a serving coordinator takes and keeps the lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lead {
    /// The advisory lock every replica of one deployment asks for.
    pub lock: i64,
    /// How often a standby asks for it and the leader checks it still holds it.
    pub every: Duration,
}

impl Default for Lead {
    fn default() -> Self {
        Self { lock: COORDINATOR_LOCK, every: Duration::from_secs(5) }
    }
}

/// The long-running coordinator: waits to lead (one replica acts, [`crate::leader`]); while it
/// leads, serves every running run through the supervised outbox and fires the scheduled jobs
/// (`[[schedule.jobs]]`); when the lead is lost, stops both and waits to lead again. Returns
/// when `stop` is cancelled (or with an error that reconnecting cannot mend). `leading` says
/// whether this replica leads, for the status page. `jobs`: the scheduled jobs, parsed from
/// `settings` by [`crate::schedule::parse_jobs`] (by the caller, which refuses a bad cron
/// expression before it starts anything).
pub async fn serve(
    store: &Store,
    settings: &Settings,
    jobs: &[Job],
    lead: Lead,
    leading: &AtomicBool,
    stop: CancellationToken,
) -> Result<(), CoordinatorError> {
    while !stop.is_cancelled() {
        let Some(leadership) = acquire(store, lead.lock, lead.every, &stop).await? else {
            break;
        };
        leading.store(true, Ordering::Relaxed);
        let lost = CancellationToken::new();
        let hold = tokio::spawn(leadership.hold(lead.every, lost.clone(), stop.clone()));
        tracing::info!(scheduled_jobs = jobs.len(), "coordinator serving running runs");
        let outbox = async {
            let served = supervise(store, settings, Target::AllRuns, lost.clone()).await;
            // The outbox ended (stop, lost lead, or an error): the scheduler ends with it.
            lost.cancel();
            served
        };
        let (served, ()) = tokio::join!(outbox, run_scheduler(store, settings, jobs, lost.clone()));
        leading.store(false, Ordering::Relaxed);
        let _ = hold.await;
        served?;
    }
    Ok(())
}

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
