//! Recoverable planning: a run is planned under a session advisory lock held by the planner's
//! own connection. A planner that dies (SIGKILL, OOM, a cut connection) loses its connection
//! and with it the lock, so "planning and nobody holds the lock" is proof that the plan died:
//! [`Planning::fail_abandoned_plans`] marks such runs `failed` with the reason, and the dataset's
//! next scheduled tick or `run create --incremental` goes on.

use crate::error::StoreError;
use crate::locks::SessionLock;
use crate::pool::Store;
use reasonrec_core::settings::RunRoute;
use uuid::Uuid;

/// First key of the planning advisory locks ("rrpl"); the second is `hashtext(run id)`.
const LOCK_CLASS: i32 = 0x7272_706c;

/// Held while a run is planned: a [`SessionLock`] on the run. Dropping it closes its
/// connection, which releases the lock.
pub struct PlanningLock {
    lock: SessionLock,
    run_id: Uuid,
}

impl std::fmt::Debug for PlanningLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanningLock").field("run_id", &self.run_id).finish()
    }
}

impl PlanningLock {
    pub fn run_id(&self) -> Uuid {
        self.run_id
    }

    /// Planning is over (the run is `running`, or failed): releases the lock.
    pub async fn release(self) {
        self.lock.release().await;
    }
}

/// A run's planning lock and the plans that died. Reached through [`Store::planning`].
#[derive(Debug, Clone, Copy)]
pub struct Planning<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Planning<'a> {
    /// Creates a run in state `planning` and takes its planning lock before the row is visible,
    /// so no one can take the run for an abandoned plan in between.
    pub async fn create_run(
        self,
        dataset_id: i64,
        settings: &serde_json::Value,
        route: RunRoute,
    ) -> Result<PlanningLock, StoreError> {
        let run_id = Uuid::now_v7();
        let mut conn = self.store.pool().acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1, hashtext($2::text))")
            .bind(LOCK_CLASS)
            .bind(run_id)
            .execute(&mut conn)
            .await?;
        let mut lock = SessionLock::on(conn);
        sqlx::query("INSERT INTO runs (id, dataset_id, state, settings, route) VALUES ($1, $2, 'planning', $3, $4)")
            .bind(run_id)
            .bind(dataset_id)
            .bind(settings)
            .bind(route.as_str())
            .execute(lock.connection())
            .await?;
        Ok(PlanningLock { lock, run_id })
    }

    /// Marks a run whose planning failed `failed` with `reason` (only while it is `planning`).
    pub async fn fail_plan(self, run_id: Uuid, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET state = 'failed', failed_reason = $2, finished_at = now()
             WHERE id = $1 AND state = 'planning'",
        )
        .bind(run_id)
        .bind(reason)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Runs of the dataset name `dataset` left `planning` by a planner that died (nobody holds
    /// their planning lock) become `failed` with the reason. Returns them. A live planner's run
    /// is left alone: its lock is held.
    pub async fn fail_abandoned_plans(self, dataset: &str) -> Result<Vec<Uuid>, StoreError> {
        let planning: Vec<Uuid> = sqlx::query_scalar(
            "SELECT r.id FROM runs r JOIN datasets d ON d.id = r.dataset_id
             WHERE d.name = $1 AND r.state = 'planning' ORDER BY r.id",
        )
        .bind(dataset)
        .fetch_all(self.store.pool())
        .await?;
        let mut failed = Vec::new();
        for run_id in planning {
            let mut tx = self.store.pool().begin().await?;
            // A transaction-level try: taken only when no planner holds the session lock, and
            // released at commit.
            let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2::text))")
                .bind(LOCK_CLASS)
                .bind(run_id)
                .fetch_one(&mut *tx)
                .await?;
            if free {
                let res = sqlx::query(
                    "UPDATE runs SET state = 'failed', finished_at = now(),
                                     failed_reason = 'planning died: no planner holds the run''s planning lock'
                     WHERE id = $1 AND state = 'planning'",
                )
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
                if res.rows_affected() == 1 {
                    failed.push(run_id);
                }
            }
            tx.commit().await?;
        }
        Ok(failed)
    }
}
