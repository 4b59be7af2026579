//! The dead-letter chore: dead-lettered task messages become failed tasks in Postgres.

use super::pace::Pace;
use crate::error::CoordinatorError;
use reasonrec_core::TaskMessage;
use reasonrec_core::metrics::metrics;
use reasonrec_queue::{Broker, DeadQueue, Redirector};
use reasonrec_store::Store;
use std::time::Duration;

/// Reads the dead queue (basic.get, at most every second) and parks what it cannot decode.
pub(crate) struct DeadLetters {
    store: Store,
    queue: DeadQueue,
    redirect: Redirector,
    pace: Pace,
}

impl DeadLetters {
    pub(crate) async fn open(store: Store, broker: &Broker) -> Result<Self, CoordinatorError> {
        Ok(Self {
            store,
            queue: broker.dead_queue().await?,
            redirect: Redirector::new(broker).await?,
            pace: Pace::now(),
        })
    }

    /// Moves dead-lettered task messages into Postgres: each task fails with the reason the
    /// message carries (delivery limit, retries spent), then the message is acked. Messages
    /// that do not decode are parked. Returns how many tasks changed. At most once a second.
    pub(crate) async fn record(&self) -> Result<u64, CoordinatorError> {
        if !self.pace.due(Duration::from_secs(1)) {
            return Ok(0);
        }
        let mut failed = 0;
        for _ in 0..1000 {
            let Some(d) = self.queue.get().await? else { break };
            let reason = d.dead_reason();
            let recorded = match TaskMessage::decode(d.data()) {
                Ok(m) => match self.store.tasks().record_dead_letter(m.task_id, m.run_id, &reason).await {
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
                Err(e) => {
                    self.redirect.park(d.data(), &format!("{reason}; undecodable: {e}")).await.map_err(Into::into)
                }
            };
            match recorded {
                Ok(()) => {
                    d.ack().await?;
                }
                Err(e) => {
                    let _ = d.hand_back().await;
                    return Err(e);
                }
            }
        }
        Ok(failed)
    }
}
