//! The read batcher: tasks delivered at about the same time are read together.
//!
//! Like the commit batcher, it takes whatever requests are waiting when the previous read is
//! done (no timer): a lone task is read at once, a busy worker reads its deliveries in a few
//! statements ([`Tasks::load_bundles`]: tasks, dependency outputs, items) instead of four
//! round trips per task.

use crate::batcher::{Batcher, Handler, shared_error};
use reasonrec_store::tasks::TaskBundle;
use reasonrec_store::{Store, StoreError};
use uuid::Uuid;

/// Handle to a running read batcher; cheap to clone.
#[derive(Clone)]
pub struct Loader(Batcher<Loads>);

impl Loader {
    /// `max_batch` <= 1 reads each task on its own, without a batcher task.
    pub fn start(store: Store, max_batch: usize) -> Self {
        Self(Batcher::start(Loads(store), max_batch))
    }

    /// The task with what its prompt needs; None when it does not exist.
    pub async fn load(&self, task_id: Uuid) -> Result<Option<TaskBundle>, StoreError> {
        self.0.call(task_id).await
    }
}

struct Loads(Store);

impl Handler for Loads {
    type Request = Uuid;
    type Answer = Option<TaskBundle>;

    async fn handle(&self, batch: Vec<Uuid>) -> Vec<Result<Option<TaskBundle>, StoreError>> {
        let mut ids = batch.clone();
        ids.sort_unstable();
        ids.dedup();
        match self.0.tasks().load_bundles(&ids).await {
            // Cloned, not moved: a task delivered twice in one batch gets a copy each time.
            Ok(bundles) => batch.iter().map(|id| Ok(bundles.get(id).cloned())).collect(),
            Err(e) => shared_error(e, batch.len()),
        }
    }
}
