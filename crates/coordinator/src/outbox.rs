//! The outbox: Postgres says which tasks are ready; the broker gets them; only confirmed
//! publishes are marked `published`.
//!
//! A crash between publish and mark leaves the task `ready`, so it is published again on the
//! next pass: a duplicate message, which the worker absorbs (idempotent completion). A task is
//! never marked published without its confirm, so none is lost. A published task is published
//! again only on evidence that its message left the queue long ago ([`crate::departures`]), never
//! because it waited long in the queue.

use crate::departures::Departures;
use crate::error::CoordinatorError;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use reasonrec_core::TaskMessage;
use reasonrec_core::metrics::metrics;
use reasonrec_core::stage::RunState;
use reasonrec_queue::error::deadline;
use reasonrec_queue::redirect::dead_reason;
use reasonrec_queue::{Broker, Publisher, Redirector};
use reasonrec_store::Store;
use std::time::{Duration, Instant};
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
    publisher: Publisher,
    /// Reads the dead queue (basic.get) and parks what it cannot decode.
    dead_channel: Channel,
    dead_queue: String,
    redirect: Redirector,
    /// Looks into the dead queue at most every second.
    dead_check: Pace,
    /// Refreshes `tasks` statistics every 20 s while runs are served.
    analyze: Pace,
    topology: reasonrec_queue::Topology,
    /// Updates the queue and run gauges every [`gauge_interval`] of the last update.
    gauges: Pace,
    batch: usize,
    max_outstanding: usize,
    republish_after: Duration,
    /// Looks for lost messages at most every `republish_after / 10`.
    stale_check: Pace,
    /// Reads the work queue's depth for the departure log (its own channel: a failed passive
    /// declare closes the channel it ran on).
    probe: Channel,
    departures: std::sync::Mutex<Departures>,
}

impl Outbox {
    pub async fn new(store: Store, broker: &Broker) -> Result<Self, CoordinatorError> {
        let publisher = Publisher::new(broker).await?;
        let max_outstanding = reasonrec_core::settings::CoordinatorSettings::default().max_outstanding;
        let republish_after =
            Duration::from_secs(reasonrec_core::settings::CoordinatorSettings::default().republish_after_secs);
        let dead_channel = broker.channel().await?;
        let mut probe = broker.channel().await?;
        let queued = match broker.topology().ready_messages(&probe).await {
            Ok(n) => n,
            // No work queue (deleted under us): nothing is queued; the failed declare closed
            // the channel. Publishes are returned until the queue is declared again.
            Err(e) if e.is_not_found() => {
                probe = broker.channel().await?;
                0
            }
            Err(e) => return Err(e.into()),
        };
        let departures = Departures::new(store.now().await?, u64::from(queued), republish_after);
        Ok(Self {
            store,
            publisher,
            dead_channel,
            dead_queue: broker.topology().dead_queue.clone(),
            redirect: Redirector::new(broker).await?,
            dead_check: Pace::now(),
            analyze: Pace::after(ANALYZE_EVERY),
            topology: broker.topology().clone(),
            gauges: Pace::now(),
            batch: broker.settings().publish_batch.max(1),
            max_outstanding,
            republish_after,
            stale_check: Pace::after(stale_check_every(republish_after)),
            probe,
            departures: std::sync::Mutex::new(departures),
        })
    }

    /// An outbox with the `coordinator` section's backlog cap and republish timeout.
    pub async fn configured(
        store: Store,
        broker: &Broker,
        settings: &reasonrec_core::settings::CoordinatorSettings,
    ) -> Result<Self, CoordinatorError> {
        Ok(Self::new(store, broker)
            .await?
            .with_max_outstanding(settings.max_outstanding)
            .with_republish_after(Duration::from_secs(settings.republish_after_secs)))
    }

    /// A published task still unfinished this long after its message left the queue is
    /// published again (`coordinator.republish_after_secs`).
    pub fn with_republish_after(mut self, after: Duration) -> Self {
        self.republish_after = after;
        self.stale_check = Pace::after(stale_check_every(after));
        if let Ok(mut d) = self.departures.lock() {
            d.set_republish_after(after);
        }
        self
    }

    /// Caps published-but-unfinished tasks per run (`coordinator.max_outstanding`).
    pub fn with_max_outstanding(mut self, n: usize) -> Self {
        self.max_outstanding = n.max(1);
        self
    }

    /// One pass over a run's ready tasks, in pages of `publish_batch`. Publishes nothing unless the run is `running` and under
    /// its budget (a run whose spend reached it is paused here: [`crate::lifecycle`]).
    pub async fn pump(&self, run_id: Uuid) -> Result<PumpReport, CoordinatorError> {
        let mut report = PumpReport::default();
        if !crate::lifecycle::may_publish(&self.store, run_id).await? {
            return Ok(report);
        }
        if self.analyze.due(ANALYZE_EVERY) {
            self.store.analyze_tasks().await?;
        }
        let outstanding = self.store.outstanding_tasks(run_id).await?.max(0) as usize;
        let mut room = self.max_outstanding.saturating_sub(outstanding);
        // Three steps per page, overlapped: while page N is published, page N-1's confirmed ids
        // are marked and page N+1 is read (it starts after page N's last id, so it cannot
        // overlap). A mark that fails or never runs leaves its tasks `ready`: published again,
        // absorbed by the workers, as after a crash between publish and mark.
        let mut want = self.batch.min(room);
        let mut page = match want {
            0 => Vec::new(),
            n => self.store.ready_tasks(run_id, Uuid::nil(), n as i64).await?,
        };
        let mut unmarked: Vec<Uuid> = Vec::new();
        while let Some(&(last, _)) = page.last() {
            let exhausted = page.len() < want;
            let next_want = self.batch.min(room.saturating_sub(page.len()));
            let messages: Vec<TaskMessage> =
                page.iter().map(|&(id, stage)| TaskMessage::new(id, run_id, stage)).collect();
            let publish = async { self.publisher.publish_batch(&messages).await.map_err(CoordinatorError::from) };
            let mark = async { self.mark(&unmarked).await };
            let read_next = async {
                match (exhausted, next_want) {
                    (true, _) | (_, 0) => Ok(Vec::new()),
                    (false, n) => self.store.ready_tasks(run_id, last, n as i64).await.map_err(CoordinatorError::from),
                }
            };
            let (r, marked, next) = tokio::try_join!(publish, mark, read_next)?;
            metrics().published.inc_by(r.confirmed.len() as u64);
            tracing::debug!(%run_id, batch = messages.len(), confirmed = r.confirmed.len(), marked, nacked = r.nacked, returned = r.returned, "outbox batch");
            report.add(PumpReport {
                published: r.confirmed.len() as u64,
                nacked: r.nacked as u64,
                returned: r.returned as u64,
            });
            room = room.saturating_sub(r.confirmed.len());
            let refused_all = r.confirmed.is_empty();
            unmarked = r.confirmed;
            // Stop when no more are ready, or when the broker refused the whole batch.
            if exhausted || refused_all {
                break;
            }
            (page, want) = (next, next_want);
        }
        self.mark(&unmarked).await?;
        if report.nacked > 0 || report.returned > 0 {
            tracing::warn!(%run_id, nacked = report.nacked, returned = report.returned, "broker refused some publishes; they stay ready and are retried");
        }
        Ok(report)
    }

    /// Marks confirmed ids published and logs the mark for the departure evidence.
    async fn mark(&self, ids: &[Uuid]) -> Result<u64, CoordinatorError> {
        let (n, at) = self.store.mark_published(ids).await?;
        if let (Some(at), Ok(mut d)) = (at, self.departures.lock()) {
            d.published(at, ids.len() as u64);
        }
        Ok(n)
    }

    /// Puts back published tasks, of every run, whose message is known to be gone (at most
    /// every `republish_after / 10`): reads the work queue's depth into the departure log and
    /// requeues what it says left long ago. The evidence is about the one work queue, so one
    /// statement covers all runs. Returns how many. A queue that cannot be read (deleted) is
    /// an error: the supervisor reconnects, which declares it again, and the new outbox's log
    /// starts from there. Runs from `drive`/`serve`, beside the dead letters.
    pub async fn republish_lost(&self) -> Result<u64, CoordinatorError> {
        if !self.stale_check_due() {
            return Ok(0);
        }
        let depth = self.topology.ready_messages(&self.probe).await?;
        let now = self.store.now().await?;
        let cut = match self.departures.lock() {
            Ok(mut d) => {
                d.observe(now, u64::from(depth));
                d.lost_before(now)
            }
            Err(_) => None,
        };
        let Some(cut) = cut else { return Ok(0) };
        let n = self.store.requeue_departed(cut).await?;
        if n > 0 {
            tracing::warn!(
                tasks = n,
                "messages left the queue long ago and their tasks are unfinished; publishing them again"
            );
        }
        Ok(n)
    }

    fn stale_check_due(&self) -> bool {
        self.stale_check.due(stale_check_every(self.republish_after))
    }

    /// Moves dead-lettered task messages into Postgres: each task fails with the reason the
    /// message carries (delivery limit, retries spent), then the message is acked. Messages
    /// that do not decode are parked. Returns how many tasks changed. Runs at most once a
    /// second from `drive`/`serve`.
    pub async fn record_dead_letters(&self) -> Result<u64, CoordinatorError> {
        if !self.dead_check.due(Duration::from_secs(1)) {
            return Ok(0);
        }
        let mut failed = 0;
        for _ in 0..1000 {
            let get = self.dead_channel.basic_get(self.dead_queue.as_str().into(), BasicGetOptions { no_ack: false });
            let Some(msg) = deadline("basic.get", 30, get).await? else { break };
            let d = msg.delivery;
            let reason = dead_reason(&d.properties);
            let recorded = match TaskMessage::decode(&d.data) {
                Ok(m) => match self.store.record_dead_letter(m.task_id, m.run_id, &reason).await {
                    Ok(changed) => {
                        tracing::warn!(task_id = %m.task_id, run_id = %m.run_id, stage = %m.stage, %reason, changed, "task dead-lettered");
                        metrics().dead_letters_recorded.inc();
                        if changed {
                            metrics().task(m.stage.as_str(), "dead_lettered");
                        }
                        failed += u64::from(changed);
                        Ok(())
                    }
                    Err(e) => Err(CoordinatorError::from(e)),
                },
                Err(e) => self.redirect.park(&d.data, &format!("{reason}; undecodable: {e}")).await.map_err(Into::into),
            };
            match recorded {
                Ok(()) => {
                    d.acker.ack(BasicAckOptions::default()).await.map_err(reasonrec_queue::QueueError::from)?;
                }
                Err(e) => {
                    let _ = d.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                    return Err(e);
                }
            }
        }
        Ok(failed)
    }

    /// Updates the queue-depth and run gauges (at most every [`gauge_interval`]): messages
    /// waiting in each queue, tasks of `runs` by state, and their cost so far.
    pub async fn update_gauges(&self, runs: &[Uuid]) -> Result<(), CoordinatorError> {
        if !self.gauges.due(GAUGES_EVERY) {
            return Ok(());
        }
        let started = Instant::now();
        let m = metrics();
        let t = &self.topology;
        let mut queues = vec![("tasks", t.work_queue.as_str()), ("dead", &t.dead_queue), ("parked", &t.parked_queue)];
        let tiers: Vec<(String, &str)> =
            t.retry_queues.iter().map(|(secs, name)| (format!("retry.{secs}s"), name.as_str())).collect();
        queues.extend(tiers.iter().map(|(label, name)| (label.as_str(), *name)));
        for (label, name) in queues {
            let depth = t.queue_depth(&self.dead_channel, name).await?;
            m.queue_messages.get_or_create(&vec![("queue", label.to_string())]).set(i64::from(depth));
        }
        for run in runs {
            let (by_state, cost) = self.store.run_gauges(*run).await?;
            for state in ["waiting", "ready", "published", "batched", "done", "failed", "cancelled"] {
                let n = by_state.get(state).copied().unwrap_or(0);
                m.run_tasks.get_or_create(&vec![("run_id", run.to_string()), ("state", state.to_string())]).set(n);
            }
            m.run_cost.get_or_create(&vec![("run_id", run.to_string())]).set(cost);
        }
        self.gauges.not_before(Instant::now() + gauge_interval(started.elapsed()));
        Ok(())
    }

    /// Publishes and watches `run_id` until it is completed (or cancelled). Returns its state.
    pub async fn drive(&self, run_id: Uuid, poll: Duration) -> Result<RunState, CoordinatorError> {
        loop {
            self.record_dead_letters().await?;
            self.republish_lost().await?;
            self.update_gauges(&[run_id]).await?;
            let report = self.pump(run_id).await?;
            let state = self.store.refresh_run_state(run_id).await?;
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
            self.record_dead_letters().await?;
            self.republish_lost().await?;
            let runs = self.store.active_runs().await?;
            self.update_gauges(&runs).await?;
            for run_id in runs {
                busy |= self.pump(run_id).await?.published > 0;
                let state = self.store.refresh_run_state(run_id).await?;
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

/// How often the outbox looks for lost messages: a tenth of `republish_after` (nothing can be
/// known lost sooner), between 100 ms and a minute.
fn stale_check_every(republish_after: Duration) -> Duration {
    (republish_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// How often `tasks` statistics are refreshed while runs are served.
const ANALYZE_EVERY: Duration = Duration::from_secs(20);
/// The shortest time between two updates of the gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(10);

/// How long after an update of the gauges, which took `took`, the next one is due: every 10 s,
/// or rarer when counting is slow ([`crate::status::count_interval`]).
pub fn gauge_interval(took: Duration) -> Duration {
    crate::status::count_interval(took, GAUGES_EVERY)
}

/// When a periodic chore is next due. [`Pace::due`] books the next time as it answers yes, so
/// two callers meanwhile do not both run it; [`Pace::not_before`] pushes it further out when the
/// chore turned out slow. A poisoned lock answers yes: the chores are idempotent.
struct Pace(std::sync::Mutex<Option<Instant>>);

impl Pace {
    /// Due at once.
    fn now() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    /// First due after `wait`.
    fn after(wait: Duration) -> Self {
        Self(std::sync::Mutex::new(Some(Instant::now() + wait)))
    }

    /// True when the chore is due, and then not again for `every`.
    fn due(&self, every: Duration) -> bool {
        let now = Instant::now();
        match self.0.lock() {
            Ok(mut next) if next.is_none_or(|t| now >= t) => {
                *next = Some(now + every);
                true
            }
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Not due again before `at`.
    fn not_before(&self, at: Instant) {
        if let Ok(mut next) = self.0.lock() {
            *next = Some(next.map_or(at, |t| t.max(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_is_due_once_per_interval_and_can_be_pushed_back() {
        let pace = Pace::now();
        assert!(pace.due(Duration::from_secs(3600)));
        assert!(!pace.due(Duration::from_secs(3600)), "booked an hour ahead");
        let soon = Pace::now();
        assert!(soon.due(Duration::ZERO));
        assert!(soon.due(Duration::ZERO), "nothing booked ahead");
        soon.not_before(Instant::now() + Duration::from_secs(3600));
        assert!(!soon.due(Duration::ZERO), "pushed back an hour");
        assert!(!Pace::after(Duration::from_secs(3600)).due(Duration::ZERO), "first due after the wait");
    }

    #[test]
    fn gauges_take_at_most_a_twentieth_of_the_time() {
        assert_eq!(gauge_interval(Duration::from_millis(20)), Duration::from_secs(10));
        assert_eq!(gauge_interval(Duration::from_millis(500)), Duration::from_secs(10));
        assert_eq!(gauge_interval(Duration::from_millis(2_500)), Duration::from_secs(50));
    }
}
