//! The commit batcher: tasks finished at about the same time share one transaction.
//!
//! Each processed task hands its [`Finish`] to the batcher and waits for the batch's result
//! before its message is acked, so "ack after commit" holds per message. The batcher takes
//! what is waiting (up to `max_batch`) whenever the previous transaction is done: no timer,
//! so a lone task commits at once and a busy worker's batches grow with the load.
//!
//! A retryable error (deadlock, lost connection) retries the batch with backoff; any other
//! error re-commits the batch one task at a time, so one bad row fails only its own task.

use backon::{ExponentialBuilder, Retryable};
use reasonrec_store::finish::{Finish, FinishOutcome};
use reasonrec_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<FinishOutcome, StoreError>>;

/// Retries of a commit after a retryable store error (deadlock, serialization, lost connection).
pub(crate) fn commit_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(20))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter()
}

/// Handle to a running batcher; cheap to clone. The batcher stops when every handle is gone.
#[derive(Clone)]
pub struct Committer {
    store: Store,
    tx: Option<mpsc::Sender<(Finish, Reply)>>,
}

impl Committer {
    /// `max_batch` <= 1 commits each task in its own transaction, without a batcher task.
    pub fn start(store: Store, max_batch: usize) -> Self {
        if max_batch <= 1 {
            return Self { store, tx: None };
        }
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(store.clone(), rx, max_batch));
        Self { store, tx: Some(tx) }
    }

    /// Commits `finish` (with others) and returns what happened to it.
    pub async fn commit(&self, finish: Finish) -> Result<FinishOutcome, StoreError> {
        let Some(tx) = &self.tx else {
            return commit_one(&self.store, finish).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((finish, _))) = tx.send((finish, reply)).await {
            return commit_one(&self.store, finish).await;
        }
        match answer.await {
            Ok(result) => result,
            // The batcher went away with our entry: nothing is known to be committed, and a
            // retry is idempotent.
            Err(_) => Err(StoreError::Batch("the batcher stopped".into())),
        }
    }
}

async fn commit_one(store: &Store, finish: Finish) -> Result<FinishOutcome, StoreError> {
    let batch = [finish];
    let mut out = (|| store.finish_tasks(&batch)).retry(commit_backoff()).when(StoreError::is_retryable).await?;
    out.pop().ok_or_else(|| StoreError::Batch("no result for the task".into()))
}

async fn run(store: Store, mut rx: mpsc::Receiver<(Finish, Reply)>, max_batch: usize) {
    let mut entries: Vec<(Finish, Reply)> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        entries.push(first);
        while entries.len() < max_batch {
            match rx.try_recv() {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        let (batch, replies): (Vec<Finish>, Vec<Reply>) = entries.drain(..).unzip();
        reasonrec_core::metrics::metrics().commit_batch.observe(batch.len() as f64);
        let result = (|| store.finish_tasks(&batch)).retry(commit_backoff()).when(StoreError::is_retryable).await;
        tracing::debug!(batch = batch.len(), ok = result.is_ok(), "commit batch");
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if e.is_retryable() || batch.len() == 1 => {
                let msg = e.to_string();
                let mut e = Some(e);
                for reply in replies {
                    // Every entry gets the error; only the first gets the original value.
                    let err = e.take().unwrap_or_else(|| StoreError::Batch(msg.clone()));
                    let _ = reply.send(Err(err));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), "commit batch failed; committing its tasks one by one");
                for (finish, reply) in batch.into_iter().zip(replies) {
                    let _ = reply.send(commit_one(&store, finish).await);
                }
            }
        }
    }
}
