//! The commit batcher: tasks finished at about the same time share one transaction.
//!
//! Each processed task hands its [`Finish`] to the batcher and waits for the batch's result
//! before its message is acked, so "ack after commit" holds per message. The batcher takes
//! what is waiting (up to `max_batch`) whenever the previous transaction is done: no timer,
//! so a lone task commits at once and a busy worker's batches grow with the load.
//!
//! A retryable error (deadlock, lost connection) retries the batch with backoff; any other
//! error re-commits the batch one task at a time, so one bad row fails only its own task.

use crate::batcher::{Batcher, Handler, shared_error};
use backon::{ExponentialBuilder, Retryable};
use reasonrec_store::finish::{Finish, FinishOutcome};
use reasonrec_store::{Store, StoreError};

/// Retries of a commit after a retryable store error (deadlock, serialization, lost connection).
pub(crate) fn commit_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(20))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter()
}

/// Handle to a running commit batcher; cheap to clone.
#[derive(Clone)]
pub struct Committer(Batcher<Commits>);

impl Committer {
    /// `max_batch` <= 1 commits each task in its own transaction, without a batcher task.
    pub fn start(store: Store, max_batch: usize) -> Self {
        Self(Batcher::start(Commits(store), max_batch))
    }

    /// Commits `finish` (with others) and returns what happened to it.
    pub async fn commit(&self, finish: Finish) -> Result<FinishOutcome, StoreError> {
        self.0.call(finish).await
    }
}

struct Commits(Store);

impl Handler for Commits {
    type Request = Finish;
    type Answer = FinishOutcome;

    async fn handle(&self, batch: Vec<Finish>) -> Vec<Result<FinishOutcome, StoreError>> {
        let store = &self.0;
        reasonrec_core::metrics::metrics().commit_batch.observe(batch.len() as f64);
        let result = finish_with_retry(store, &batch).await;
        tracing::debug!(batch = batch.len(), ok = result.is_ok(), "commit batch");
        match result {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if e.is_retryable() || batch.len() == 1 => shared_error(e, batch.len()),
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), "commit batch failed; committing its tasks one by one");
                let mut out = Vec::with_capacity(batch.len());
                for finish in batch {
                    let result = finish_with_retry(store, &[finish]).await;
                    out.push(
                        result.and_then(|mut o| {
                            o.pop().ok_or_else(|| StoreError::Batch("no result for the task".into()))
                        }),
                    );
                }
                out
            }
        }
    }
}

async fn finish_with_retry(store: &Store, batch: &[Finish]) -> Result<Vec<FinishOutcome>, StoreError> {
    (|| store.finishing().finish_tasks(batch)).retry(commit_backoff()).when(StoreError::is_retryable).await
}
