//! Run lifecycle as the outbox sees it: only a `running` run is published, and a run whose spend
//! reached its budget pauses itself here.
//!
//! Pausing stops publishing, nothing else: messages already in the queue are still worked (they
//! were published before the pause, and a worker does not look at the run's state except to skip
//! a cancelled run's tasks), so a paused run's spend can still grow by what was outstanding, at
//! most `coordinator.max_outstanding` tasks. A paused run is never marked completed
//! (`Runs::refresh_state` only completes running runs); `run create --wait` keeps waiting
//! through a pause. On resume, tasks whose messages were lost meanwhile are published again by the
//! usual republish of stale `published` tasks.
//!
//! Priorities: the long-running outbox serves running runs in `priority DESC, created_at` order on
//! every pass, so a higher-priority run's ready tasks enter the queue (and are consumed, FIFO)
//! before a lower one's; each run keeps its own `max_outstanding` share, so a low-priority run is
//! slowed, never starved.

use crate::error::CoordinatorError;
use reasonrec_store::Store;
use reasonrec_store::lifecycle::Gate;
use uuid::Uuid;

/// Priority of an incremental run when none is given: regeneration comes after new data
/// (plain runs have priority 0).
pub const INCREMENTAL_PRIORITY: i32 = -10;

/// Whether the outbox may publish `run_id`'s tasks now; pauses the run (and says so) when its
/// spend reached its budget.
pub async fn may_publish(store: &Store, run_id: Uuid) -> Result<bool, CoordinatorError> {
    match store.lifecycle().publish_gate(run_id).await? {
        Gate::Open => Ok(true),
        Gate::Closed { state } => {
            tracing::trace!(%run_id, %state, "run not running; nothing published");
            Ok(false)
        }
        Gate::BudgetReached { reason, paused_now } => {
            if paused_now {
                tracing::warn!(%run_id, %reason, "run paused: budget reached; raise it with `reasonrec run budget` and `reasonrec run resume`");
            }
            Ok(false)
        }
    }
}

/// Applies the `[retention]` policy (`reasonrec run prune`, and the leader after a scheduled run
/// when `retention.on_schedule`): see `reasonrec_store::retention`.
pub async fn prune(
    store: &Store,
    settings: &reasonrec_core::settings::RetentionSettings,
    dry_run: bool,
) -> Result<reasonrec_store::retention::PruneReport, CoordinatorError> {
    let policy = reasonrec_store::retention::Retention {
        keep_completed: settings.keep_completed.max(1),
        keep_days: settings.keep_days,
    };
    Ok(store.pruning().prune(policy, dry_run).await?)
}
