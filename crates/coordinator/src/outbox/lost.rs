//! The lost-message chore: a published task is published again only on evidence that its
//! message left the work queue long ago ([`crate::departures`]), never because it waited long.

use super::pace::Pace;
use crate::departures::Departures;
use crate::error::CoordinatorError;
use reasonrec_queue::{Broker, Probe};
use reasonrec_store::Store;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The departure log (shared with the publishing chore, which logs every mark) and the channel
/// that reads the work queue's depth into it.
pub(crate) struct LostMessages {
    store: Store,
    /// Reads the work queue's depth (its own channel: a failed passive declare closes the
    /// channel it ran on).
    probe: Probe,
    departures: Arc<Mutex<Departures>>,
    /// How often to look for lost messages: a tenth of the log's `republish_after` (the log
    /// holds that setting; this is only its pace).
    check_every: Duration,
    /// Due every `check_every`.
    pace: Pace,
}

impl LostMessages {
    pub(crate) async fn open(
        store: Store,
        broker: &Broker,
        republish_after: Duration,
    ) -> Result<Self, CoordinatorError> {
        let mut probe = broker.probe().await?;
        let queued = match probe.ready_messages().await {
            Ok(n) => n,
            // No work queue (deleted under us): nothing is queued; the failed declare closed
            // the channel. Publishes are returned until the queue is declared again.
            Err(e) if e.is_not_found() => {
                probe = broker.probe().await?;
                0
            }
            Err(e) => return Err(e.into()),
        };
        let departures = Departures::new(store.runs().now().await?, u64::from(queued), republish_after);
        let check_every = every(republish_after);
        Ok(Self {
            store,
            probe,
            departures: Arc::new(Mutex::new(departures)),
            check_every,
            pace: Pace::after(check_every),
        })
    }

    /// The log the publishing chore writes its marks into.
    pub(crate) fn departures(&self) -> Arc<Mutex<Departures>> {
        self.departures.clone()
    }

    /// A published task still unfinished this long after its message left the queue is
    /// published again (`coordinator.republish_after_secs`).
    pub(crate) fn set_republish_after(&mut self, after: Duration) {
        self.check_every = every(after);
        self.pace = Pace::after(self.check_every);
        if let Ok(mut d) = self.departures.lock() {
            d.set_republish_after(after);
        }
    }

    /// Puts back published tasks, of every run, whose message is known to be gone (at most
    /// every `republish_after / 10`): reads the work queue's depth into the departure log and
    /// requeues what it says left long ago. The evidence is about the one work queue, so one
    /// statement covers all runs. Returns how many. A queue that cannot be read (deleted) is
    /// an error: the supervisor reconnects, which declares it again, and the new log starts
    /// from there.
    pub(crate) async fn republish(&self) -> Result<u64, CoordinatorError> {
        if !self.pace.due(self.check_every) {
            return Ok(0);
        }
        let depth = self.probe.ready_messages().await?;
        let now = self.store.runs().now().await?;
        let cut = match self.departures.lock() {
            Ok(mut d) => {
                d.observe(now, u64::from(depth));
                d.lost_before(now)
            }
            Err(_) => None,
        };
        let Some(cut) = cut else { return Ok(0) };
        let n = self.store.runs().requeue_departed(cut).await?;
        if n > 0 {
            tracing::warn!(
                tasks = n,
                "messages left the queue long ago and their tasks are unfinished; publishing them again"
            );
        }
        Ok(n)
    }
}

/// How often to look for lost messages: a tenth of `republish_after` (nothing can be known lost
/// sooner), between 100 ms and a minute.
fn every(republish_after: Duration) -> Duration {
    (republish_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}
