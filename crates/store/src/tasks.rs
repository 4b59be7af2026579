//! What a worker reads about a task. Finishing tasks is in [`crate::finish`].
//!
//! Invariant: a task is finished by the transaction of [`crate::finish`], following the state
//! machine of [`reasonrec_core::finishing`]; the worker acks the message after commit.

use crate::error::StoreError;
use crate::pool::Store;
use reasonrec_core::data::Family;
use reasonrec_core::key::OutputKey;
use reasonrec_core::stage::{RunState, Split, Stage, TaskState};
use std::collections::HashMap;
use uuid::Uuid;

/// A task with what its prompt is rendered from.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskContext {
    pub id: Uuid,
    pub run_id: Uuid,
    pub stage: Stage,
    pub state: TaskState,
    pub run_state: RunState,
    pub dataset_id: i64,
    pub family: Family,
    pub user_id: Option<i32>,
    pub item_id: Option<i32>,
    pub split: Option<Split>,
    pub label: Option<bool>,
    pub input: serde_json::Value,
    /// Bumped when an upstream output changed after the task was made ready; a completion
    /// rendered from an older version is superseded.
    pub inputs_version: i32,
    /// A batch endpoint's answer was rejected and the task is re-asked live, carrying on that
    /// conversation ([`Batches::live_reask_conversation`]).
    pub live_reask: bool,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ItemRow {
    pub id: i32,
    pub title: String,
    pub attrs: serde_json::Value,
}

/// The output of an upstream task, as a downstream prompt uses it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DependencyOutput {
    pub stage: Stage,
    pub user_id: Option<i32>,
    pub item_id: Option<i32>,
    pub text: Option<String>,
}

/// An accepted answer to store in the ledger.
#[derive(Debug, Clone)]
pub struct NewOutput {
    pub key: OutputKey,
    pub stage: Stage,
    pub text: String,
    pub template: String,
    pub template_version: String,
    pub model: String,
    pub params: serde_json::Value,
    pub input_tokens: i32,
    pub output_tokens: i32,
    /// A judge's score (`core::validate::judge_score`); None for the other stages.
    pub score: Option<i16>,
}

/// What rendering one task needs, read for many tasks at once ([`Tasks::load_bundles`]).
#[derive(Debug, Clone)]
pub struct TaskBundle {
    pub task: TaskContext,
    /// Items of the task's dataset mentioned by any task of the same load (a superset of this
    /// task's).
    pub items: std::sync::Arc<HashMap<i32, ItemRow>>,
    /// Outputs of the tasks this one depends on.
    pub deps: Vec<DependencyOutput>,
}

/// What finishing a task did ([`Finishing::finish_tasks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The task moved to done in this transaction (false: it already was).
    pub newly_done: bool,
    /// A new ledger row was written (false: the key existed and was reused).
    pub output_inserted: bool,
    /// The answer was rendered from inputs that changed since (an upstream output arrived):
    /// nothing moved; render and ask again.
    pub superseded: bool,
}

/// The one definition of "the judge of a reasoning task", as a join condition between a judge
/// task (alias `judge`) and a reasoning task (alias `task`): the same run's judge task with the
/// same subject (one probe of the (run, stage, subject) index). The browser's score filter and
/// page, and the export's judge scores, all join through it.
pub(crate) fn judge_of(judge: &str, task: &str) -> String {
    format!("{judge}.run_id = {task}.run_id AND {judge}.stage = 'judge' AND {judge}.subject = {task}.subject")
}

/// What a worker reads about a task, dead letters, single-task cancel. Reached through [`Store::tasks`].
#[derive(Debug, Clone, Copy)]
pub struct Tasks<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Tasks<'a> {
    pub async fn load(self, task_id: Uuid) -> Result<TaskContext, StoreError> {
        let mut tasks = self.load_tasks(&[task_id]).await?;
        tasks.pop().ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))
    }

    /// The tasks of `ids` that exist, with their run's state and dataset (one query).
    pub async fn load_tasks(self, ids: &[Uuid]) -> Result<Vec<TaskContext>, StoreError> {
        Ok(sqlx::query_as::<_, TaskContext>(
            "SELECT t.id, t.run_id, t.stage, t.state, r.state AS run_state, r.dataset_id, d.family,
                    t.user_id, t.item_id, t.split, t.label, t.input, t.inputs_version, t.live_reask
             FROM tasks t JOIN runs r ON r.id = t.run_id JOIN datasets d ON d.id = r.dataset_id
             WHERE t.id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Tasks with the items their prompts mention and their dependencies' outputs, for many
    /// tasks in three queries (tasks, dependency outputs, items per dataset). Missing ids are
    /// absent from the map.
    pub async fn load_bundles(self, ids: &[Uuid]) -> Result<HashMap<Uuid, TaskBundle>, StoreError> {
        let tasks = self.load_tasks(ids).await?;
        if tasks.is_empty() {
            return Ok(HashMap::new());
        }
        let found: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
        let mut deps = self.dependency_outputs_of(&found).await?;
        let mut wanted: HashMap<i64, Vec<i32>> = HashMap::new();
        for t in &tasks {
            wanted.entry(t.dataset_id).or_default().extend(reasonrec_core::inputs::item_ids(t.stage, &t.input));
        }
        let mut items = HashMap::new();
        for (dataset, mut ids) in wanted {
            ids.sort_unstable();
            ids.dedup();
            items.insert(dataset, std::sync::Arc::new(self.load_items(dataset, &ids).await?));
        }
        Ok(tasks
            .into_iter()
            .map(|task| {
                let items = items.get(&task.dataset_id).cloned().unwrap_or_default();
                let deps = deps.remove(&task.id).unwrap_or_default();
                (task.id, TaskBundle { task, items, deps })
            })
            .collect())
    }

    pub async fn load_items(self, dataset_id: i64, ids: &[i32]) -> Result<HashMap<i32, ItemRow>, StoreError> {
        let rows =
            sqlx::query_as::<_, ItemRow>("SELECT id, title, attrs FROM items WHERE dataset_id = $1 AND id = ANY($2)")
                .bind(dataset_id)
                .bind(ids)
                .fetch_all(self.store.pool())
                .await?;
        Ok(rows.into_iter().map(|item| (item.id, item)).collect())
    }

    /// The first of `keys` (in order) that the ledger holds.
    pub async fn first_existing_output(self, keys: &[OutputKey]) -> Result<Option<OutputKey>, StoreError> {
        let found = self.existing_outputs(keys).await?;
        Ok(keys.iter().find(|k| found.contains(*k)).copied())
    }

    /// Those of `keys` that the ledger holds.
    pub async fn existing_outputs(
        self,
        keys: &[OutputKey],
    ) -> Result<std::collections::HashSet<OutputKey>, StoreError> {
        let bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let found: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key FROM outputs WHERE key = ANY($1)")
            .bind(&bytes)
            .fetch_all(self.store.pool())
            .await?;
        Ok(found.iter().filter_map(|f| OutputKey::from_slice(f)).collect())
    }

    /// Records that a task's message was dead-lettered: the task fails with `reason` (so
    /// `run retry-failed` can put it back) unless it finished meanwhile, through the same state
    /// machine as a worker's failure. Returns whether it changed. Idempotent.
    pub async fn record_dead_letter(self, task_id: Uuid, run_id: Uuid, reason: &str) -> Result<bool, StoreError> {
        let kind = crate::finish::FinishKind::Fail { error: format!("dead-lettered: {reason}") };
        let finish = crate::finish::Finish { task_id, run_id, inputs_version: 0, kind, attempts: Vec::new() };
        let done = self.store.finishing().finish_tasks(&[finish]).await?;
        Ok(done.first().is_some_and(|c| c.newly_done))
    }

    /// Outputs of the tasks each of `task_ids` depends on (text is None where the upstream task
    /// failed), by dependent task.
    pub async fn dependency_outputs_of(
        self,
        task_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<DependencyOutput>>, StoreError> {
        let rows = sqlx::query_as::<_, (Uuid, Stage, Option<i32>, Option<i32>, Option<String>)>(
            "SELECT d.task_id, t.stage, t.user_id, t.item_id, o.text
             FROM task_deps d JOIN tasks t ON t.id = d.depends_on LEFT JOIN outputs o ON o.key = t.output_key
             WHERE d.task_id = ANY($1)",
        )
        .bind(task_ids)
        .fetch_all(self.store.pool())
        .await?;
        let mut out: HashMap<Uuid, Vec<DependencyOutput>> = HashMap::new();
        for (task_id, stage, user_id, item_id, text) in rows {
            out.entry(task_id).or_default().push(DependencyOutput { stage, user_id, item_id, text });
        }
        Ok(out)
    }

    /// Reviews of an item (rating and the stored review object), oldest first.
    pub async fn item_reviews(
        self,
        dataset_id: i64,
        item_id: i32,
    ) -> Result<Vec<(f32, serde_json::Value)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT rating, review FROM interactions
             WHERE dataset_id = $1 AND item_id = $2 AND review IS NOT NULL ORDER BY ts, user_id",
        )
        .bind(dataset_id)
        .bind(item_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Marks a task of a cancelled run cancelled.
    pub async fn cancel(self, task_id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tasks SET state = 'cancelled' WHERE id = $1 AND state IN ('waiting', 'ready', 'published', 'batched')",
        )
        .bind(task_id)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }
}
