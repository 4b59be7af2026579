//! Reads for incremental planning (`run create --incremental`, issue 8): the previous completed
//! run of a dataset name, its tasks in one stream, what task fingerprints are computed from
//! (item rows, review digests, id maps between dataset versions) and the token averages the dry
//! run estimates from. Each is one statement per dataset or run, never one per task.

use crate::error::StoreError;
use crate::pool::Store;
use futures::{Stream, TryStreamExt};
use reasonrec_core::stage::{Split, Stage, TaskState};
use uuid::Uuid;

/// The run an incremental run is compared with.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PreviousRun {
    pub id: Uuid,
    pub dataset_id: i64,
    pub dataset_version: i32,
    /// The settings snapshot it was planned with (`runs.settings`).
    pub settings: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// One task of the previous run, with the ledger row it ended with.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PreviousTask {
    pub stage: Stage,
    pub user_id: Option<i32>,
    pub item_id: Option<i32>,
    pub split: Option<Split>,
    pub state: TaskState,
    pub fingerprint: Option<Vec<u8>>,
    pub output_key: Option<Vec<u8>>,
    /// When the output was first made (`outputs.created_at`), by whichever run made it.
    #[sqlx(rename = "created_at")]
    pub output_created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Model and sampling parameters (JSON text) of the endpoint that made the output.
    pub model: Option<String>,
    pub params: Option<String>,
}

/// Per stage, what the previous run's outputs cost, for the dry run's estimate.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct StageTokens {
    pub stage: String,
    /// Done tasks with an output.
    pub outputs: i64,
    pub avg_input_tokens: f64,
    pub avg_output_tokens: f64,
    /// Teacher calls per task the run asked (retries and re-asks included); None: it asked none.
    pub calls_per_task: Option<f64>,
}

/// Reads for incremental planning. Reached through [`Store::incremental`].
#[derive(Debug, Clone, Copy)]
pub struct Incremental<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Incremental<'a> {
    /// "The latest completed run" of dataset name `name` (any version), the one definition of it:
    /// the most recently *created* completed run, i.e. the one planned from the newest data. An
    /// incremental run compares with it and `train export --dataset` exports it. (Ordering by
    /// `finished_at` instead picked an older run that `run retry-failed` had reopened and
    /// finished again.)
    pub async fn latest_completed_run(self, name: &str) -> Result<Option<PreviousRun>, StoreError> {
        Ok(sqlx::query_as::<_, PreviousRun>(
            "SELECT r.id, r.dataset_id, d.version AS dataset_version, r.settings, r.created_at
             FROM runs r JOIN datasets d ON d.id = r.dataset_id
             WHERE d.name = $1 AND r.state = 'completed'
             ORDER BY r.created_at DESC, r.id DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?)
    }

    /// Every task of a run with its output's age and teacher, streamed (a run may have millions).
    pub fn stream_previous_tasks(
        self,
        run_id: Uuid,
    ) -> impl Stream<Item = Result<PreviousTask, StoreError>> + Send + 'a {
        sqlx::query_as::<_, PreviousTask>(
            "SELECT t.stage, t.user_id, t.item_id, t.split, t.state, t.fingerprint, t.output_key,
                    o.created_at, o.model, o.params::text AS params
             FROM tasks t LEFT JOIN outputs o ON o.key = t.output_key
             WHERE t.run_id = $1",
        )
        .bind(run_id)
        .fetch(self.store.pool())
        .map_err(StoreError::from)
    }

    /// Every item of a dataset as (id, title, attrs as JSONB text: canonical key order), streamed.
    pub fn stream_item_contents(
        self,
        dataset_id: i64,
    ) -> impl Stream<Item = Result<(i32, String, String), StoreError>> + Send + 'a {
        sqlx::query_as("SELECT id, title, attrs::text FROM items WHERE dataset_id = $1")
            .bind(dataset_id)
            .fetch(self.store.pool())
            .map_err(StoreError::from)
    }

    /// Per item that has reviews: SHA-256 over its reviews (rating and review JSON) in the order
    /// the worker reads them (`Tasks::item_reviews`), computed by Postgres in one grouped pass.
    pub async fn review_digests(self, dataset_id: i64) -> Result<Vec<(i32, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT item_id,
                    sha256(convert_to(string_agg(rating::text || ' ' || review::text, E'\\n' ORDER BY ts, user_id), 'UTF8'))
             FROM interactions WHERE dataset_id = $1 AND review IS NOT NULL GROUP BY item_id",
        )
        .bind(dataset_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// (dense id, source id) of a dataset version's users.
    pub async fn user_ext_ids(self, dataset_id: i64) -> Result<Vec<(i32, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT id, ext_id FROM users WHERE dataset_id = $1")
            .bind(dataset_id)
            .fetch_all(self.store.pool())
            .await?)
    }

    /// (dense id, source id) of a dataset version's items.
    pub async fn item_ext_ids(self, dataset_id: i64) -> Result<Vec<(i32, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT id, ext_id FROM items WHERE dataset_id = $1")
            .bind(dataset_id)
            .fetch_all(self.store.pool())
            .await?)
    }

    /// Per stage: average tokens of a run's outputs and teacher calls per task it asked.
    pub async fn stage_tokens(self, run_id: Uuid) -> Result<Vec<StageTokens>, StoreError> {
        let mut out = sqlx::query_as::<_, StageTokens>(
            "SELECT t.stage, count(*) AS outputs,
                    COALESCE(avg(o.input_tokens), 0)::float8 AS avg_input_tokens,
                    COALESCE(avg(o.output_tokens), 0)::float8 AS avg_output_tokens,
                    NULL::float8 AS calls_per_task
             FROM tasks t JOIN outputs o ON o.key = t.output_key
             WHERE t.run_id = $1 GROUP BY 1",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?;
        let calls = sqlx::query_as::<_, (String, f64)>(
            "SELECT t.stage, count(*)::float8 / count(DISTINCT a.task_id)
             FROM attempts a JOIN tasks t ON t.id = a.task_id
             WHERE a.run_id = $1 GROUP BY 1",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?;
        for (stage, per_task) in calls {
            if let Some(s) = out.iter_mut().find(|s| s.stage == stage) {
                s.calls_per_task = Some(per_task);
            }
        }
        Ok(out)
    }
}
