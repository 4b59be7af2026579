//! The read batcher: tasks delivered at about the same time are read together.
//!
//! Like the commit batcher, it takes whatever requests are waiting when the previous read is
//! done (no timer): a lone task is read at once, a busy worker reads its deliveries in a few
//! statements ([`Store::load_bundles`]: tasks, dependency outputs, items) instead of four
//! round trips per task.

use reasonrec_store::tasks::TaskBundle;
use reasonrec_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

type Reply = oneshot::Sender<Result<Option<TaskBundle>, StoreError>>;

#[derive(Clone)]
pub struct Loader {
    store: Store,
    tx: Option<mpsc::Sender<(Uuid, Reply)>>,
}

impl Loader {
    /// `max_batch` <= 1 reads each task on its own, without a batcher task.
    pub fn start(store: Store, max_batch: usize) -> Self {
        if max_batch <= 1 {
            return Self { store, tx: None };
        }
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(store.clone(), rx, max_batch));
        Self { store, tx: Some(tx) }
    }

    /// The task with what its prompt needs; None when it does not exist.
    pub async fn load(&self, task_id: Uuid) -> Result<Option<TaskBundle>, StoreError> {
        let Some(tx) = &self.tx else {
            return Ok(self.store.load_bundles(&[task_id]).await?.remove(&task_id));
        };
        let (reply, answer) = oneshot::channel();
        if tx.send((task_id, reply)).await.is_err() {
            return Ok(self.store.load_bundles(&[task_id]).await?.remove(&task_id));
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::Batch("the read batcher stopped".into())))
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<(Uuid, Reply)>, max_batch: usize) {
    let mut entries: Vec<(Uuid, Reply)> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        entries.push(first);
        while entries.len() < max_batch {
            match rx.try_recv() {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        let mut ids: Vec<Uuid> = entries.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        match store.load_bundles(&ids).await {
            Ok(bundles) => {
                // Cloned, not moved: a task delivered twice in one batch gets a copy each time.
                for (id, reply) in entries.drain(..) {
                    let _ = reply.send(Ok(bundles.get(&id).cloned()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let mut e = Some(e);
                for (_, reply) in entries.drain(..) {
                    let err = e.take().unwrap_or_else(|| StoreError::Batch(msg.clone()));
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}
