//! Reads for the coordinator's status page: recent runs and completions over time.

use crate::error::StoreError;
use crate::pool::Store;
use reasonrec_core::stage::RunState;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunSummary {
    pub run_id: Uuid,
    pub dataset: String,
    pub dataset_version: i32,
    pub state: RunState,
    pub priority: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The status page's reads. Reached through [`Store::monitor`].
#[derive(Debug, Clone, Copy)]
pub struct Monitor<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Monitor<'a> {
    /// The `limit` most recent runs, newest first, running ones before the others.
    pub async fn recent_runs(self, limit: i64) -> Result<Vec<RunSummary>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.id AS run_id, d.name AS dataset, d.version AS dataset_version, r.state, r.priority, r.created_at,
                    r.finished_at
             FROM runs r JOIN datasets d ON d.id = r.dataset_id
             ORDER BY (r.state = 'running') DESC, r.created_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// A run of the dataset called `name` (any version) that is not finished yet, if any.
    pub async fn unfinished_run_of(self, name: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT r.id FROM runs r JOIN datasets d ON d.id = r.dataset_id
             WHERE d.name = $1 AND r.state IN ('planning', 'running', 'paused') ORDER BY r.created_at LIMIT 1",
        )
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?)
    }

    /// Tasks of `run_id` finished per minute over its last `minutes` minutes of activity:
    /// (minute start as unix seconds, done, failed), oldest first.
    pub async fn completions_per_minute(self, run_id: Uuid, minutes: i32) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "WITH last AS (SELECT max(done_at) AS t FROM tasks WHERE run_id = $1)
             SELECT extract(epoch FROM date_trunc('minute', t.done_at))::bigint AS m,
                    count(*) FILTER (WHERE t.state = 'done'), count(*) FILTER (WHERE t.state = 'failed')
             FROM tasks t, last
             WHERE t.run_id = $1 AND t.done_at IS NOT NULL
               AND t.done_at > last.t - make_interval(mins => $2)
             GROUP BY 1 ORDER BY 1",
        )
        .bind(run_id)
        .bind(minutes)
        .fetch_all(self.store.pool())
        .await?)
    }
}
