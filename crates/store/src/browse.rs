//! Reads for the corpus browser (issue 18): a run's tasks in keyset pages by task id under
//! filters, and one task with its output, mark, attempts and upstream tasks.
//!
//! Pages are `id > after ORDER BY id LIMIT n` within the run: a run's ids are UUIDv7 made at
//! planning, so they sit together in the primary key and a page costs the rows it reads, not
//! the run's size. A filter that few rows pass reads further to fill a page. Text search is a
//! case-insensitive substring test (`lower(text) LIKE '%...%'`). Without an index it reads the
//! run's answers until a page fills (a word 1 in 100,000 answers hold: seconds on a 1M-task
//! run). The trigram index on the answers (`reasonrec corpus text-index`, [`TEXT_INDEX`]) answers
//! it from the outputs that hold the text; it is opt-in because every output the workers write
//! pays for it (BENCHMARKS.md, session 10). The statement is planned for its values each time
//! (not a cached generic plan), so the planner sees how rare the searched text is.

use crate::error::StoreError;
use crate::pool::Store;
use crate::tasks::judge_of;
use reasonrec_core::audit::Verdict;
use reasonrec_core::stage::{Split, Stage, TaskState};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

/// Which marks a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkFilter {
    Approved,
    Rejected,
    Unreviewed,
}

/// Filters of a page; each one set narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskFilter {
    pub stage: Option<Stage>,
    pub state: Option<TaskState>,
    pub split: Option<Split>,
    pub label: Option<bool>,
    /// An attempt of the task ended with this error class (`rejected` for validator rejections).
    pub error_class: Option<String>,
    /// The model that made the output.
    pub model: Option<String>,
    pub template_version: Option<String>,
    /// Carried over from an earlier run (true) or worked in this one (false).
    pub carried: Option<bool>,
    /// The answer contains this text (case-insensitive).
    pub text: Option<String>,
    pub min_words: Option<i32>,
    pub max_words: Option<i32>,
    pub mark: Option<MarkFilter>,
    /// The judge's score (`[stages] judge`) at least / at most this: a judge task's own, a
    /// reasoning task's judge's.
    pub min_score: Option<i16>,
    pub max_score: Option<i16>,
}

/// A task as a page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TaskListRow {
    pub id: Uuid,
    pub stage: Stage,
    pub state: TaskState,
    pub subject: String,
    pub split: Option<Split>,
    pub label: Option<bool>,
    pub carried: bool,
    pub model: Option<String>,
    pub template_version: Option<String>,
    pub words: Option<i32>,
    pub verdict: Option<Verdict>,
    /// The judge's score: a judge task's own, a reasoning task's judge's (None: not judged).
    pub score: Option<i16>,
    /// The answer's first 200 characters.
    pub excerpt: Option<String>,
    pub last_error: Option<String>,
}

/// One task with everything the task page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub row: TaskListRow,
    pub run_id: Uuid,
    pub input: serde_json::Value,
    pub history_truncated: i32,
    pub output: Option<OutputView>,
    pub attempts: Vec<AttemptView>,
    pub upstream: Vec<Upstream>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputView {
    /// Hex of the content key.
    pub key: String,
    pub text: String,
    pub template: String,
    pub template_version: String,
    pub model: String,
    pub params: serde_json::Value,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub verdict: Option<Verdict>,
    pub reason: Option<String>,
    pub reviewer: Option<String>,
    pub marked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub endpoint: String,
    pub model: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Upstream {
    pub id: Uuid,
    pub stage: Stage,
    pub state: TaskState,
    pub subject: String,
}

/// The columns of a [`TaskListRow`] over `tasks t`, `outputs o` and `audit_marks a`.
const LIST_COLUMNS: &str = "t.id, t.stage, t.state, t.subject, t.split, t.label, t.carried_from IS NOT NULL AS carried,
       o.model, o.template_version, a.verdict, left(o.text, 200) AS excerpt, t.last_error, o.score, o.words";

const LIST_FROM: &str = " FROM tasks t LEFT JOIN outputs o ON o.key = t.output_key
       LEFT JOIN audit_marks a ON a.output_key = t.output_key";

/// What the task page reads in one statement: the list row and the output's, mark's and
/// task's other columns (the output's are None when the task has none).
#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    row: TaskListRow,
    run_id: Uuid,
    input: serde_json::Value,
    history_truncated: i32,
    key: Option<String>,
    text: Option<String>,
    template: Option<String>,
    params: Option<serde_json::Value>,
    input_tokens: Option<i32>,
    output_tokens: Option<i32>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    reason: Option<String>,
    reviewer: Option<String>,
    marked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl DetailRow {
    /// The output as the page shows it; None without one (every output column is set with it).
    fn output(&self) -> Option<OutputView> {
        Some(OutputView {
            key: self.key.clone()?,
            text: self.text.clone()?,
            template: self.template.clone()?,
            template_version: self.row.template_version.clone().unwrap_or_default(),
            model: self.row.model.clone().unwrap_or_default(),
            params: self.params.clone()?,
            input_tokens: self.input_tokens?,
            output_tokens: self.output_tokens?,
            created_at: self.created_at?,
            verdict: self.row.verdict,
            reason: self.reason.clone(),
            reviewer: self.reviewer.clone(),
            marked_at: self.marked_at,
        })
    }
}

/// A `LIKE` pattern (escape character `\`) matching any text that contains `text` as it is:
/// its `%`, `_` and `\` stand for themselves.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Appends `filter`'s conditions (every value bound, never spliced into the SQL).
fn push_filter(q: &mut QueryBuilder<'_, Postgres>, run: Uuid, f: &TaskFilter) {
    if let Some(stage) = f.stage {
        q.push(" AND t.stage = ").push_bind(stage);
    }
    if let Some(state) = f.state {
        q.push(" AND t.state = ").push_bind(state);
    }
    if let Some(split) = f.split {
        q.push(" AND t.split = ").push_bind(split);
    }
    if let Some(label) = f.label {
        q.push(" AND t.label = ").push_bind(label);
    }
    if let Some(class) = &f.error_class {
        q.push(" AND t.id IN (SELECT task_id FROM attempts WHERE run_id = ")
            .push_bind(run)
            .push(" AND error_class = ")
            .push_bind(class.clone())
            .push(")");
    }
    if let Some(model) = &f.model {
        q.push(" AND o.model = ").push_bind(model.clone());
    }
    if let Some(version) = &f.template_version {
        q.push(" AND o.template_version = ").push_bind(version.clone());
    }
    match f.carried {
        Some(true) => {
            q.push(" AND t.carried_from IS NOT NULL");
        }
        Some(false) => {
            q.push(" AND t.carried_from IS NULL");
        }
        None => {}
    }
    if let Some(text) = f.text.as_deref().filter(|t| !t.is_empty()) {
        q.push(" AND lower(o.text) LIKE lower(").push_bind(contains_pattern(text)).push(")");
    }
    // Counted when the output was written (`outputs.words`, sql/0019).
    if let Some(min) = f.min_words {
        q.push(" AND o.words >= ").push_bind(min);
    }
    if let Some(max) = f.max_words {
        q.push(" AND o.words <= ").push_bind(max);
    }
    match f.mark {
        Some(MarkFilter::Approved) => {
            q.push(" AND a.verdict = 'approved'");
        }
        Some(MarkFilter::Rejected) => {
            q.push(" AND a.verdict = 'rejected'");
        }
        Some(MarkFilter::Unreviewed) => {
            q.push(" AND t.output_key IS NOT NULL AND a.verdict IS NULL");
        }
        None => {}
    }
    // A judge task's own score, or a reasoning task's judge's.
    let score = format!(
        "COALESCE(o.score, (SELECT jo.score FROM tasks j JOIN outputs jo ON jo.key = j.output_key
         WHERE t.stage = 'reasoning' AND {}))",
        judge_of("j", "t")
    );
    if let Some(min) = f.min_score {
        q.push(format!(" AND {score} >= ")).push_bind(min);
    }
    if let Some(max) = f.max_score {
        q.push(format!(" AND {score} <= ")).push_bind(max);
    }
}

/// The trigram index on the answers that text search uses when it exists: opt-in, a GIN index
/// of `pg_trgm` (a trusted extension, which a database owner may create). Trigram rather than
/// full-text: the search is a case-insensitive substring (a word's stem, a title's fragment, a
/// number), which a tsvector index cannot answer, and it needs no language configuration.
pub const TEXT_INDEX: &str = "outputs_text_trgm";

/// The corpus browser's reads. Reached through [`Store::browser`].
#[derive(Debug, Clone, Copy)]
pub struct Browser<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Browser<'a> {
    /// Builds the answers' trigram index (`CONCURRENTLY`: workers go on writing meanwhile) or,
    /// with `on` false, drops it. Does nothing when it is already as asked.
    pub async fn set_text_index(self, on: bool) -> Result<(), StoreError> {
        if on {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute(self.store.pool()).await?;
            // A build that was interrupted leaves an invalid index of that name: dropped first.
            if !self.text_index().await?.unwrap_or(true) {
                sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {TEXT_INDEX}"))
                    .execute(self.store.pool())
                    .await?;
            }
            sqlx::query(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {TEXT_INDEX} ON outputs USING gin (lower(text) gin_trgm_ops)"
            ))
            .execute(self.store.pool())
            .await?;
        } else {
            sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {TEXT_INDEX}")).execute(self.store.pool()).await?;
        }
        Ok(())
    }

    /// Whether the answers' trigram index exists: Some(valid), None when it does not.
    pub async fn text_index(self) -> Result<Option<bool>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname = $1 AND pg_table_is_visible(c.oid)",
        )
        .bind(TEXT_INDEX)
        .fetch_optional(self.store.pool())
        .await?)
    }

    /// A task's output key (None: no output, or no such task).
    pub async fn output_key_of(self, task: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>("SELECT output_key FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_optional(self.store.pool())
            .await?
            .flatten())
    }

    /// Up to `limit` tasks of `run` passing `filter`, after task `after` (None: from the first)
    /// in id order; the next page starts after the last one returned.
    pub async fn tasks(
        self,
        run: Uuid,
        filter: &TaskFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<TaskListRow>, StoreError> {
        // The page's ids first, then its columns: the answers and marks are read for the page's
        // rows only, not for every row a sparse filter passes before the sort (a rare mark's
        // candidates are found from the marks, thousands of them on a large corpus).
        let mut q = QueryBuilder::new(format!(
            "SELECT {LIST_COLUMNS}{LIST_FROM} WHERE t.id IN (SELECT t.id{LIST_FROM} WHERE t.run_id = "
        ));
        q.push_bind(run);
        q.push(" AND t.id > ").push_bind(after.unwrap_or(Uuid::nil()));
        push_filter(&mut q, run, filter);
        q.push(" ORDER BY t.id LIMIT ").push_bind(limit.clamp(1, 500)).push(") ORDER BY t.id");
        // Planned with its values: a cached generic plan would not know a searched text is rare.
        // Without parallel workers, but for a text search: a keyset page reads some thousands of
        // rows at most, and workers each read ahead on their own (at 10M tasks a rare mark's
        // page read 100k rows in 3 processes instead of 49k in one: 100 ms instead of 57). A
        // text search without the trigram index scans the answers, which workers halve.
        let mut tx = self.store.pool().begin().await?;
        if filter.text.as_deref().is_none_or(str::is_empty) {
            sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0").execute(&mut *tx).await?;
        }
        let mut rows = q.build_query_as::<TaskListRow>().persistent(false).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        self.add_judge_scores(run, &mut rows).await?;
        Ok(rows)
    }

    /// Sets the score of each reasoning row from its judge task (one read for the page).
    async fn add_judge_scores(self, run: Uuid, rows: &mut [TaskListRow]) -> Result<(), StoreError> {
        let subjects: Vec<&str> =
            rows.iter().filter(|r| r.stage == Stage::Reasoning).map(|r| r.subject.as_str()).collect();
        if subjects.is_empty() {
            return Ok(());
        }
        let scores: std::collections::HashMap<String, Option<i16>> = sqlx::query_as(&format!(
            "SELECT t.subject, o.score FROM tasks t JOIN tasks j ON {} JOIN outputs o ON o.key = j.output_key
             WHERE t.run_id = $1 AND t.stage = 'reasoning' AND t.subject = ANY($2)",
            judge_of("j", "t")
        ))
        .bind(run)
        .bind(&subjects)
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .collect();
        for r in rows.iter_mut().filter(|r| r.stage == Stage::Reasoning) {
            r.score = scores.get(&r.subject).copied().flatten();
        }
        Ok(())
    }

    /// One task with its output, mark, attempts (oldest first) and upstream tasks.
    pub async fn task_detail(self, id: Uuid) -> Result<TaskDetail, StoreError> {
        let r = sqlx::query_as::<_, DetailRow>(&format!(
            "SELECT {LIST_COLUMNS}, t.run_id, t.input, t.history_truncated, encode(o.key, 'hex') AS key, o.text,
                    o.template, o.params, o.input_tokens, o.output_tokens, o.created_at,
                    a.reason, a.reviewer, a.marked_at
             {LIST_FROM} WHERE t.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
        let output = r.output();
        let DetailRow { mut row, run_id, input, history_truncated, .. } = r;
        self.add_judge_scores(run_id, std::slice::from_mut(&mut row)).await?;
        let attempts = self.attempt_views(run_id, id).await?;
        let upstream = self.upstream_of(id).await?;
        Ok(TaskDetail { row, run_id, input, history_truncated, output, attempts, upstream })
    }

    /// A task's attempts, oldest first.
    async fn attempt_views(self, run_id: Uuid, task: Uuid) -> Result<Vec<AttemptView>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT endpoint, model, started_at, duration_ms, http_status, error_class, error, input_tokens,
                    output_tokens, cost_usd
             FROM attempts WHERE run_id = $1 AND task_id = $2 ORDER BY started_at, id",
        )
        .bind(run_id)
        .bind(task)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// The tasks whose outputs a task's prompt uses.
    async fn upstream_of(self, task: Uuid) -> Result<Vec<Upstream>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT u.id, u.stage, u.state, u.subject FROM task_deps d JOIN tasks u ON u.id = d.depends_on
             WHERE d.task_id = $1 ORDER BY u.stage, u.subject",
        )
        .bind(task)
        .fetch_all(self.store.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_searched_text_is_matched_as_it_is() {
        assert_eq!(contains_pattern("liked"), "%liked%");
        assert_eq!(contains_pattern("100%_a\\b"), "%100\\%\\_a\\\\b%", "LIKE's wildcards stand for themselves");
    }
}
