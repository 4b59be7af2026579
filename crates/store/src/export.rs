//! Reads for the student export (`reasonrec train export`): the done reasoning tasks of a run with
//! their ledger output, in keyset pages by task id, and per page the items and profile outputs
//! they mention. Every read is one statement per page, never one per row, so an export of a
//! million rows is a few thousand round trips and holds one page in memory.

use crate::error::StoreError;
use crate::pool::Store;
use crate::tasks::judge_of;
use reasonrec_core::audit::{AuditPolicy, Verdict};
use reasonrec_core::inputs::ReasoningInput;
use reasonrec_core::stage::Split;
use sqlx::Row;
use std::collections::HashMap;
use uuid::Uuid;

/// A done reasoning task with the answer the ledger holds for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTask {
    pub id: Uuid,
    pub split: Split,
    pub label: bool,
    /// The task's input, decoded straight from the stored JSON (through a `serde_json::Value`
    /// it cost a tenth of the export's CPU).
    pub input: ReasoningInput,
    /// Oldest history entries the worker cut from the prompt (the teacher did not see them).
    pub history_truncated: i32,
    pub user_id: i32,
    pub item_id: i32,
    /// The dataset's own ids of the user and the target item.
    pub user_ext_id: String,
    pub item_ext_id: String,
    pub text: String,
    pub template: String,
    pub template_version: String,
    pub model: String,
    pub params: serde_json::Value,
    /// The output's audit mark (`audit_marks`), if a reviewer marked it.
    pub audit: Option<reasonrec_core::audit::Verdict>,
    /// The score of the task's judge (`[stages] judge`), when asked for and the judge is done.
    pub judge_score: Option<i16>,
}

/// Task counts of a run, for the export manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct ExportCounts {
    pub tasks: i64,
    pub done: i64,
    pub reasoning: i64,
    pub reasoning_done: i64,
    pub reasoning_failed: i64,
}

/// The columns of an [`ExportTask`], read from `page` (the page's task rows, see the queries).
/// No ORDER BY: the rows are sorted by id here ([`in_id_order`]); in SQL the sort of 2,000 wide
/// rows spilled to disk at the default `work_mem`.
const TASK_COLUMNS: &str = "t.id, t.split, t.label, t.input, t.history_truncated, t.user_id, t.item_id,
       u.ext_id AS user_ext, i.ext_id AS item_ext,
       o.text, o.template, o.template_version, o.model, o.params, a.verdict";
const TASK_FROM: &str = "
FROM page t
JOIN outputs o ON o.key = t.output_key
LEFT JOIN audit_marks a ON a.output_key = t.output_key
JOIN users u ON u.dataset_id = $2 AND u.id = t.user_id
JOIN items i ON i.dataset_id = $2 AND i.id = t.item_id";

/// The select list and joins of an export read; with `judged`, each row's judge score too (its
/// judge task shares its subject: one probe of the (run, stage, subject) index per row, paid
/// only when a score filter asks for it).
fn task_select(judged: bool) -> String {
    if judged {
        format!(
            "{TASK_COLUMNS}, jo.score AS judge_score {TASK_FROM}
LEFT JOIN tasks j ON {} AND j.state = 'done'
LEFT JOIN outputs jo ON jo.key = j.output_key",
            judge_of("j", "t")
        )
    } else {
        format!("{TASK_COLUMNS}, NULL::smallint AS judge_score {TASK_FROM}")
    }
}

fn in_id_order(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<ExportTask>, StoreError> {
    let mut tasks = rows.iter().map(export_task).collect::<Result<Vec<_>, _>>()?;
    tasks.sort_unstable_by_key(|t| t.id);
    Ok(tasks)
}

fn export_task(r: &sqlx::postgres::PgRow) -> Result<ExportTask, StoreError> {
    let id: Uuid = r.try_get("id")?;
    let missing = |what: &str| StoreError::Corrupt(format!("reasoning task {id} has no {what}"));
    Ok(ExportTask {
        id,
        split: r.try_get::<Option<Split>, _>("split")?.ok_or_else(|| missing("split"))?,
        label: r.try_get::<Option<bool>, _>("label")?.ok_or_else(|| missing("label"))?,
        input: r
            .try_get::<sqlx::types::Json<ReasoningInput>, _>("input")
            .map_err(|e| StoreError::Corrupt(format!("reasoning task {id} has a malformed input: {e}")))?
            .0,
        history_truncated: r.try_get("history_truncated")?,
        user_id: r.try_get::<Option<i32>, _>("user_id")?.ok_or_else(|| missing("user"))?,
        item_id: r.try_get::<Option<i32>, _>("item_id")?.ok_or_else(|| missing("item"))?,
        user_ext_id: r.try_get("user_ext")?,
        item_ext_id: r.try_get("item_ext")?,
        text: r.try_get("text")?,
        template: r.try_get("template")?,
        template_version: r.try_get("template_version")?,
        model: r.try_get("model")?,
        params: r.try_get("params")?,
        audit: r.try_get("verdict")?,
        judge_score: r.try_get("judge_score")?,
    })
}

/// The student export's reads. Reached through [`Store::exports`].
#[derive(Debug, Clone, Copy)]
pub struct Exports<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Exports<'a> {
    /// The next page of a run's done reasoning tasks after `after` in id order (keyset
    /// pagination; start with `Uuid::nil()`). `dataset_id` is the run's dataset; `judged`: read
    /// each row's judge score.
    pub async fn page(
        self,
        run_id: Uuid,
        dataset_id: i64,
        after: Uuid,
        limit: i64,
        judged: bool,
    ) -> Result<Vec<ExportTask>, StoreError> {
        // The page is chosen first (an ordered range of `tasks_by_run_state_id`), then joined:
        // left to itself the planner joined and sorted every remaining task to keep 2,000.
        let sql = format!(
            "WITH page AS MATERIALIZED (
                 SELECT * FROM tasks
                 WHERE run_id = $1 AND state = 'done' AND id > $3 AND stage = 'reasoning'
                 ORDER BY id LIMIT $4)
             SELECT {}",
            task_select(judged)
        );
        let rows = sqlx::query(&sql)
            .bind(run_id)
            .bind(dataset_id)
            .bind(after)
            .bind(limit)
            .fetch_all(self.store.pool())
            .await?;
        in_id_order(&rows)
    }

    /// The done reasoning tasks of a run among `ids`, in id order (the few-shot re-read).
    pub async fn tasks_by_id(self, run_id: Uuid, dataset_id: i64, ids: &[Uuid]) -> Result<Vec<ExportTask>, StoreError> {
        let sql = format!(
            "WITH page AS MATERIALIZED (
                 SELECT * FROM tasks
                 WHERE id = ANY($3) AND run_id = $1 AND stage = 'reasoning' AND state = 'done')
             SELECT {}",
            task_select(false)
        );
        let rows = sqlx::query(&sql).bind(run_id).bind(dataset_id).bind(ids).fetch_all(self.store.pool()).await?;
        in_id_order(&rows)
    }

    /// The outputs of the run's done user-profile tasks of `users` that `policy` admits, by user
    /// id, and how many it left out. Found through the unique index on (run, stage, subject),
    /// subject `u<user>`.
    pub async fn user_profiles(
        self,
        run_id: Uuid,
        users: &[i32],
        policy: AuditPolicy,
    ) -> Result<(HashMap<i32, String>, u64), StoreError> {
        let subjects: Vec<String> = users.iter().map(|u| format!("u{u}")).collect();
        self.profile_outputs(run_id, "user_profile", &subjects, "user_id", policy).await
    }

    /// The outputs of the run's done item-profile tasks of `items` that `policy` admits, by item
    /// id (subject `i<item>`), and how many it left out.
    pub async fn item_profiles(
        self,
        run_id: Uuid,
        items: &[i32],
        policy: AuditPolicy,
    ) -> Result<(HashMap<i32, String>, u64), StoreError> {
        let subjects: Vec<String> = items.iter().map(|i| format!("i{i}")).collect();
        self.profile_outputs(run_id, "item_profile", &subjects, "item_id", policy).await
    }

    async fn profile_outputs(
        self,
        run_id: Uuid,
        stage: &str,
        subjects: &[String],
        id_column: &str,
        policy: AuditPolicy,
    ) -> Result<(HashMap<i32, String>, u64), StoreError> {
        if subjects.is_empty() {
            return Ok((HashMap::new(), 0));
        }
        let sql = format!(
            "SELECT t.{id_column}, o.text, m.verdict FROM tasks t JOIN outputs o ON o.key = t.output_key
             LEFT JOIN audit_marks m ON m.output_key = t.output_key
             WHERE t.run_id = $1 AND t.stage = $2 AND t.subject = ANY($3) AND t.state = 'done'"
        );
        let rows = sqlx::query_as::<_, (Option<i32>, String, Option<Verdict>)>(&sql)
            .bind(run_id)
            .bind(stage)
            .bind(subjects)
            .fetch_all(self.store.pool())
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        let mut left_out = 0;
        for (id, text, verdict) in rows {
            if !policy.admits(verdict) {
                left_out += 1;
                continue;
            }
            if let Some(id) = id {
                out.insert(id, text);
            }
        }
        Ok((out, left_out))
    }

    /// How many tasks of a run there are and how many are done, overall and for reasoning.
    pub async fn counts(self, run_id: Uuid) -> Result<ExportCounts, StoreError> {
        Ok(sqlx::query_as::<_, ExportCounts>(
            "SELECT count(*) AS tasks,
                    count(*) FILTER (WHERE state = 'done') AS done,
                    count(*) FILTER (WHERE stage = 'reasoning') AS reasoning,
                    count(*) FILTER (WHERE stage = 'reasoning' AND state = 'done') AS reasoning_done,
                    count(*) FILTER (WHERE stage = 'reasoning' AND state = 'failed') AS reasoning_failed
             FROM tasks WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_one(self.store.pool())
        .await?)
    }
}
