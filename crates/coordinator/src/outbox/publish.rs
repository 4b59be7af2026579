//! The publishing chore: Postgres says which tasks are ready; the broker gets them; only
//! confirmed publishes are marked `published`.
//!
//! A crash between publish and mark leaves the task `ready`, so it is published again on the
//! next pass: a duplicate message, which the worker absorbs (idempotent completion). A task is
//! never marked published without its confirm, so none is lost.

use super::PumpReport;
use crate::departures::Departures;
use crate::error::CoordinatorError;
use reasonrec_core::TaskMessage;
use reasonrec_core::metrics::metrics;
use reasonrec_queue::{Broker, Publisher};
use reasonrec_store::Store;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub(crate) struct Publish {
    store: Store,
    publisher: Publisher,
    /// Tasks read and published per page (`broker.publish_batch`).
    batch: usize,
    /// Published-but-unfinished tasks per run at most (`coordinator.max_outstanding`).
    pub(crate) max_outstanding: usize,
    /// Every mark is logged here: the lost-message chore's evidence.
    departures: Arc<Mutex<Departures>>,
}

impl Publish {
    pub(crate) async fn open(
        store: Store,
        broker: &Broker,
        max_outstanding: usize,
        departures: Arc<Mutex<Departures>>,
    ) -> Result<Self, CoordinatorError> {
        Ok(Self {
            store,
            publisher: Publisher::new(broker).await?,
            batch: broker.settings().publish_batch.max(1),
            max_outstanding,
            departures,
        })
    }

    /// One pass over a run's ready tasks, in pages of `publish_batch`. Publishes nothing unless the run is `running` and under
    /// its budget (a run whose spend reached it is paused here: [`crate::lifecycle`]).
    pub(crate) async fn pump(&self, run_id: Uuid) -> Result<PumpReport, CoordinatorError> {
        let mut report = PumpReport::default();
        if !crate::lifecycle::may_publish(&self.store, run_id).await? {
            return Ok(report);
        }
        let outstanding = self.store.runs().outstanding_tasks(run_id).await?.max(0) as usize;
        let mut room = self.max_outstanding.saturating_sub(outstanding);
        // Three steps per page, overlapped: while page N is published, page N-1's confirmed ids
        // are marked and page N+1 is read (it starts after page N's last id, so it cannot
        // overlap). A mark that fails or never runs leaves its tasks `ready`: published again,
        // absorbed by the workers, as after a crash between publish and mark.
        let mut want = self.batch.min(room);
        let mut page = match want {
            0 => Vec::new(),
            n => self.store.runs().ready_tasks(run_id, Uuid::nil(), n as i64).await?,
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
                    (false, n) => {
                        self.store.runs().ready_tasks(run_id, last, n as i64).await.map_err(CoordinatorError::from)
                    }
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
        let (n, at) = self.store.runs().mark_published(ids).await?;
        if let (Some(at), Ok(mut d)) = (at, self.departures.lock()) {
            d.published(at, ids.len() as u64);
        }
        Ok(n)
    }
}
