//! The statistics chore: `ANALYZE tasks` every 20 s while runs are served.

use super::pace::Pace;
use crate::error::CoordinatorError;
use reasonrec_store::Store;
use std::time::Duration;

/// How often `tasks` statistics are refreshed while runs are served.
const ANALYZE_EVERY: Duration = Duration::from_secs(20);

pub(crate) struct Statistics {
    store: Store,
    pace: Pace,
}

impl Statistics {
    pub(crate) fn new(store: Store) -> Self {
        Self { store, pace: Pace::after(ANALYZE_EVERY) }
    }

    /// A run starts with every task `ready`; as they move on, statistics taken at the start make
    /// the outbox's reads walk past finished tasks ([`Runs::analyze_tasks`]).
    pub(crate) async fn refresh(&self) -> Result<(), CoordinatorError> {
        if self.pace.due(ANALYZE_EVERY) {
            self.store.runs().analyze_tasks().await?;
        }
        Ok(())
    }
}
