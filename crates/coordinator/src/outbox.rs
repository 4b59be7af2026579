//! The outbox: the coordinator's periodic chores, each its own type in `outbox/`, and the one
//! loop that runs them ([`Outbox::drive`] for one run, [`Outbox::serve`] for every running run).
//!
//! - [`publish`]: ready tasks to the broker; only confirmed publishes are marked `published`.
//! - [`lost`]: a published task is published again only on evidence that its message left the
//!   queue long ago ([`crate::departures`]), never because it waited long in the queue.
//! - [`dead_letters`]: dead-lettered task messages become failed tasks.
//! - [`gauges`]: queue depths and the served runs' tasks and spend, for `/metrics`.
//! - [`statistics`]: `ANALYZE tasks` while runs are served.
//!
//! Each pass runs every chore that is due, then publishes. A chore's error ends the pass with
//! the chore's name on it; [`crate::service::supervise`] opens a new session (new connection
//! and channels) and every chore starts afresh: one place restarts them all.

mod dead_letters;
mod gauges;
mod lost;
mod pace;
mod publish;
mod statistics;

pub use gauges::gauge_interval;

use crate::error::CoordinatorError;
use dead_letters::DeadLetters;
use gauges::Gauges;
use lost::LostMessages;
use publish::Publish;
use reasonrec_core::settings::CoordinatorSettings;
use reasonrec_core::stage::RunState;
use reasonrec_queue::Broker;
use reasonrec_store::Store;
use statistics::Statistics;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PumpReport {
    pub published: u64,
    pub nacked: u64,
    pub returned: u64,
}

impl PumpReport {
    fn add(&mut self, other: PumpReport) {
        self.published += other.published;
        self.nacked += other.nacked;
        self.returned += other.returned;
    }
}

pub struct Outbox {
    store: Store,
    publish: Publish,
    lost: LostMessages,
    dead_letters: DeadLetters,
    gauges: Gauges,
    statistics: Statistics,
}

/// Names the chore an error came from.
fn chore(name: &'static str) -> impl FnOnce(CoordinatorError) -> CoordinatorError {
    move |e| CoordinatorError::Chore { chore: name, source: Box::new(e) }
}

impl Outbox {
    /// The chores on `broker`, with the default backlog cap and republish timeout.
    pub async fn new(store: Store, broker: &Broker) -> Result<Self, CoordinatorError> {
        let defaults = CoordinatorSettings::default();
        let lost =
            LostMessages::open(store.clone(), broker, Duration::from_secs(defaults.republish_after_secs)).await?;
        Ok(Self {
            publish: Publish::open(store.clone(), broker, defaults.max_outstanding, lost.departures()).await?,
            lost,
            dead_letters: DeadLetters::open(store.clone(), broker).await?,
            gauges: Gauges::open(store.clone(), broker).await?,
            statistics: Statistics::new(store.clone()),
            store,
        })
    }

    /// The chores with the `coordinator` section's backlog cap and republish timeout.
    pub async fn configured(
        store: Store,
        broker: &Broker,
        settings: &CoordinatorSettings,
    ) -> Result<Self, CoordinatorError> {
        Ok(Self::new(store, broker)
            .await?
            .with_max_outstanding(settings.max_outstanding)
            .with_republish_after(Duration::from_secs(settings.republish_after_secs)))
    }

    /// A published task still unfinished this long after its message left the queue is
    /// published again (`coordinator.republish_after_secs`).
    pub fn with_republish_after(mut self, after: Duration) -> Self {
        self.lost.set_republish_after(after);
        self
    }

    /// Caps published-but-unfinished tasks per run (`coordinator.max_outstanding`).
    pub fn with_max_outstanding(mut self, n: usize) -> Self {
        self.publish.max_outstanding = n.max(1);
        self
    }

    /// One pass over a run's ready tasks ([`publish`]).
    pub async fn pump(&self, run_id: Uuid) -> Result<PumpReport, CoordinatorError> {
        self.publish.pump(run_id).await.map_err(chore("publish"))
    }

    /// Records the dead-lettered task messages now, if due ([`dead_letters`]).
    pub async fn record_dead_letters(&self) -> Result<u64, CoordinatorError> {
        self.dead_letters.record().await.map_err(chore("dead letters"))
    }

    /// Publishes again what the evidence says is lost, if due ([`lost`]).
    pub async fn republish_lost(&self) -> Result<u64, CoordinatorError> {
        self.lost.republish().await.map_err(chore("lost messages"))
    }

    /// The chores besides publishing, each when it is due, for the runs served now.
    async fn housekeeping(&self, runs: &[Uuid]) -> Result<(), CoordinatorError> {
        self.record_dead_letters().await?;
        self.republish_lost().await?;
        self.gauges.update(runs).await.map_err(chore("gauges"))?;
        if !runs.is_empty() {
            self.statistics.refresh().await.map_err(chore("statistics"))?;
        }
        Ok(())
    }

    /// Publishes and watches `run_id` until it is completed (or cancelled). Returns its state.
    pub async fn drive(&self, run_id: Uuid, poll: Duration) -> Result<RunState, CoordinatorError> {
        loop {
            self.housekeeping(&[run_id]).await?;
            let report = self.pump(run_id).await?;
            let state = self.store.runs().refresh_state(run_id).await?;
            if matches!(state, RunState::Completed | RunState::Cancelled) {
                return Ok(state);
            }
            if report.published == 0 {
                tokio::time::sleep(poll).await;
            }
        }
    }

    /// Serves every running run until `stop` resolves: the long-running coordinator.
    pub async fn serve(
        &self,
        poll: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), CoordinatorError> {
        let mut stop = std::pin::pin!(stop);
        loop {
            let mut busy = false;
            let runs = self.store.runs().active().await?;
            self.housekeeping(&runs).await?;
            for run_id in runs {
                busy |= self.pump(run_id).await?.published > 0;
                let state = self.store.runs().refresh_state(run_id).await?;
                if state == RunState::Completed {
                    tracing::info!(%run_id, "run completed");
                }
            }
            if !busy {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}
