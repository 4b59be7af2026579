//! Run lifecycle (issue 8): pause and resume, per-run budgets, priorities, the run list, named
//! snapshots of a completed run's corpus and the diff of two corpora.
//!
//! Refusals a person can act on (resuming a run still over its budget, snapshotting a run that
//! is not completed, reusing a snapshot name) are outcomes, not errors: the caller says why.

use crate::error::StoreError;
use crate::pool::Store;
use reasonrec_core::stage::RunState;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A run's spending limits; None = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct Budget {
    pub usd: Option<f64>,
    /// Input plus output tokens of every attempt.
    pub tokens: Option<i64>,
}

impl Budget {
    pub fn is_set(&self) -> bool {
        self.usd.is_some() || self.tokens.is_some()
    }

    /// Why `spend` is at or over this budget (`budget reached: $x of $y`), None while under it.
    pub fn reached(&self, spend: &Spend) -> Option<String> {
        let mut over = Vec::new();
        if let Some(usd) = self.usd.filter(|&b| spend.cost_usd >= b) {
            over.push(format!("{} of {}", dollars(spend.cost_usd), dollars(usd)));
        }
        if let Some(tokens) = self.tokens.filter(|&b| spend.tokens >= b) {
            over.push(format!("{} of {tokens} tokens", spend.tokens));
        }
        (!over.is_empty()).then(|| format!("budget reached: {}", over.join(", ")))
    }

    /// `$0.50`, `1000 tokens`, both, or `none`.
    pub fn render(&self) -> String {
        let mut parts = Vec::new();
        if let Some(usd) = self.usd {
            parts.push(dollars(usd));
        }
        if let Some(tokens) = self.tokens {
            parts.push(format!("{tokens} tokens"));
        }
        if parts.is_empty() { "none".into() } else { parts.join(" / ") }
    }
}

/// Dollars with as many decimals as small amounts need.
pub fn dollars(x: f64) -> String {
    if x == 0.0 || x.abs() >= 100.0 {
        format!("${x:.2}")
    } else if x.abs() >= 0.01 {
        format!("${x:.4}")
    } else {
        format!("${x:.6}")
    }
}

/// What a run's teacher attempts cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct Spend {
    pub cost_usd: f64,
    /// Input plus output tokens.
    pub tokens: i64,
}

/// A run's lifecycle columns.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Lifecycle {
    pub state: RunState,
    pub priority: i32,
    #[sqlx(flatten)]
    pub budget: Budget,
    pub paused_reason: Option<String>,
}

/// Whether the outbox may publish a run's tasks now ([`Lifecycles::publish_gate`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Open,
    /// The run is not `running` (paused, planning, completed, cancelled).
    Closed {
        state: RunState,
    },
    /// Spend reached the budget: the run is paused now (by this call when `paused_now`).
    BudgetReached {
        reason: String,
        paused_now: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseOutcome {
    Paused,
    AlreadyPaused,
    /// Only a running run can be paused.
    NotRunning {
        state: RunState,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeOutcome {
    Resumed,
    NotPaused {
        state: RunState,
    },
    /// Spend is still at or over the budget: raise it first (`run budget`).
    OverBudget {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Created,
    /// The name already names a snapshot (of this run or another); names are never reused.
    NameTaken {
        run_id: Uuid,
    },
    /// Only a completed run's corpus is frozen.
    RunNotCompleted {
        state: RunState,
    },
}

/// One line of `run list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunListing {
    pub run_id: Uuid,
    pub dataset: String,
    pub dataset_version: i32,
    pub state: RunState,
    pub paused_reason: Option<String>,
    pub priority: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    pub spend: Spend,
    pub budget: Budget,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Snapshot {
    pub name: String,
    pub run_id: Uuid,
    pub dataset: String,
    pub dataset_version: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub note: Option<String>,
    /// Done tasks of the run, by stage.
    #[sqlx(json)]
    pub done: BTreeMap<String, i64>,
}

/// A corpus named on the command line: a run id or a snapshot name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorpusRef {
    pub run_id: Uuid,
    pub snapshot: Option<String>,
    pub dataset: String,
    pub dataset_version: i32,
    pub state: RunState,
}

/// Tasks of one stage by how they differ between corpus A and corpus B.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiffCounts {
    /// Done in B only.
    pub added: i64,
    /// Done in A only.
    pub removed: i64,
    /// Done in both with another ledger output.
    pub changed: i64,
    /// Among `changed`: the label (reasoning tasks) differs too.
    pub label_changed: i64,
    /// Done in both with the same output.
    pub unchanged: i64,
}

impl DiffCounts {
    fn add(&mut self, o: &DiffCounts) {
        self.added += o.added;
        self.removed += o.removed;
        self.changed += o.changed;
        self.label_changed += o.label_changed;
        self.unchanged += o.unchanged;
    }
}

/// A task that was added, removed or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffExample {
    pub stage: String,
    /// `u<user>:i<item>:<split>` in the dataset's own ids (see [`Lifecycles::corpus_diff`]).
    pub subject: String,
    pub label_a: Option<bool>,
    pub label_b: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CorpusDiff {
    pub by_stage: BTreeMap<String, DiffCounts>,
    pub total: DiffCounts,
    /// category (`added`, `removed`, `changed`) -> the first examples in (stage, subject) order.
    pub examples: BTreeMap<String, Vec<DiffExample>>,
}

/// A run's done tasks keyed by stage and the source ids of their user, item and split:
/// `$run` is the run's id.
const DONE_BY_SOURCE_ID: &str = "SELECT t.stage, concat_ws(':', 'u' || u.ext_id, 'i' || i.ext_id, t.split) AS subject,
            t.output_key, t.label
     FROM tasks t JOIN runs r ON r.id = t.run_id
     LEFT JOIN users u ON u.dataset_id = r.dataset_id AND u.id = t.user_id
     LEFT JOIN items i ON i.dataset_id = r.dataset_id AND i.id = t.item_id
     WHERE t.run_id = $run AND t.state = 'done'";

/// Pause and resume, budgets, priorities, the run list, snapshots, corpus diffs. Reached through [`Store::lifecycle`].
#[derive(Debug, Clone, Copy)]
pub struct Lifecycles<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Lifecycles<'a> {
    /// State, priority, budget and pause reason of a run.
    pub async fn get(self, run_id: Uuid) -> Result<Lifecycle, StoreError> {
        sqlx::query_as::<_, Lifecycle>(
            "SELECT state, priority, budget_usd AS usd, budget_tokens AS tokens, paused_reason FROM runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))
    }

    pub async fn set_priority(self, run_id: Uuid, priority: i32) -> Result<(), StoreError> {
        let res = sqlx::query("UPDATE runs SET priority = $2 WHERE id = $1")
            .bind(run_id)
            .bind(priority)
            .execute(self.store.pool())
            .await?;
        found(res.rows_affected(), run_id)
    }

    /// Replaces a run's budget (both limits; None removes one). A paused run stays paused:
    /// `resume_run` reopens it.
    pub async fn set_budget(self, run_id: Uuid, budget: &Budget) -> Result<(), StoreError> {
        let res = sqlx::query("UPDATE runs SET budget_usd = $2, budget_tokens = $3 WHERE id = $1")
            .bind(run_id)
            .bind(budget.usd)
            .bind(budget.tokens)
            .execute(self.store.pool())
            .await?;
        found(res.rows_affected(), run_id)
    }

    /// What the run's attempts cost so far (dollars, input + output tokens).
    pub async fn spend(self, run_id: Uuid) -> Result<Spend, StoreError> {
        spend(self.store.pool(), run_id).await
    }

    /// Pauses a running run: the outbox publishes none of its tasks until `resume_run`.
    pub async fn pause(self, run_id: Uuid, reason: &str) -> Result<PauseOutcome, StoreError> {
        let res =
            sqlx::query("UPDATE runs SET state = 'paused', paused_reason = $2 WHERE id = $1 AND state = 'running'")
                .bind(run_id)
                .bind(reason)
                .execute(self.store.pool())
                .await?;
        if res.rows_affected() == 1 {
            return Ok(PauseOutcome::Paused);
        }
        let state = self.get(run_id).await?.state;
        Ok(if state == RunState::Paused { PauseOutcome::AlreadyPaused } else { PauseOutcome::NotRunning { state } })
    }

    /// Reopens a paused run, unless its spend is still at or over its budget. The row is locked
    /// while deciding, so a concurrent budget change or pause waits for it.
    pub async fn resume(self, run_id: Uuid) -> Result<ResumeOutcome, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let (state, usd, tokens) = sqlx::query_as::<_, (RunState, Option<f64>, Option<i64>)>(
            "SELECT state, budget_usd, budget_tokens FROM runs WHERE id = $1 FOR UPDATE",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
        if state != RunState::Paused {
            return Ok(ResumeOutcome::NotPaused { state });
        }
        let budget = Budget { usd, tokens };
        if budget.is_set()
            && let Some(reason) = budget.reached(&spend(&mut *tx, run_id).await?)
        {
            return Ok(ResumeOutcome::OverBudget { reason });
        }
        sqlx::query("UPDATE runs SET state = 'running', paused_reason = NULL WHERE id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ResumeOutcome::Resumed)
    }

    /// The outbox asks before each pass over a run: only a `running` run is published, and one
    /// whose spend reached its budget is paused here, with the reason. One query for a run
    /// without a budget; one more (its attempts, by the `attempts_by_run` index) with one.
    pub async fn publish_gate(self, run_id: Uuid) -> Result<Gate, StoreError> {
        let l = self.get(run_id).await?;
        if l.state != RunState::Running {
            return Ok(Gate::Closed { state: l.state });
        }
        if !l.budget.is_set() {
            return Ok(Gate::Open);
        }
        let Some(reason) = l.budget.reached(&self.spend(run_id).await?) else {
            return Ok(Gate::Open);
        };
        let res =
            sqlx::query("UPDATE runs SET state = 'paused', paused_reason = $2 WHERE id = $1 AND state = 'running'")
                .bind(run_id)
                .bind(&reason)
                .execute(self.store.pool())
                .await?;
        Ok(Gate::BudgetReached { reason, paused_now: res.rows_affected() == 1 })
    }

    /// The `limit` most recently created runs, newest first, with task counts and spend.
    pub async fn list_runs(self, limit: i64) -> Result<Vec<RunListing>, StoreError> {
        /// A listing as one flat row (spend and budget both have tokens).
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            name: String,
            version: i32,
            state: RunState,
            paused_reason: Option<String>,
            priority: i32,
            created_at: chrono::DateTime<chrono::Utc>,
            finished_at: Option<chrono::DateTime<chrono::Utc>>,
            total: i64,
            done: i64,
            failed: i64,
            cost: f64,
            tokens: i64,
            budget_usd: Option<f64>,
            budget_tokens: Option<i64>,
        }
        let rows = sqlx::query_as::<_, Row>(
            "SELECT r.id, d.name, d.version, r.state, r.paused_reason, r.priority, r.created_at, r.finished_at,
                    t.total, t.done, t.failed, a.cost, a.tokens, r.budget_usd, r.budget_tokens
             FROM (SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT $1) r
             JOIN datasets d ON d.id = r.dataset_id
             CROSS JOIN LATERAL (
                 SELECT count(*) AS total, count(*) FILTER (WHERE state = 'done') AS done,
                        count(*) FILTER (WHERE state = 'failed') AS failed
                 FROM tasks WHERE run_id = r.id) t
             CROSS JOIN LATERAL (
                 SELECT COALESCE(sum(cost_usd), 0)::float8 AS cost,
                        COALESCE(sum(input_tokens::int8 + output_tokens), 0)::int8 AS tokens
                 FROM attempts WHERE run_id = r.id) a
             ORDER BY r.created_at DESC, r.id DESC",
        )
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunListing {
                run_id: r.id,
                dataset: r.name,
                dataset_version: r.version,
                state: r.state,
                paused_reason: r.paused_reason,
                priority: r.priority,
                created_at: r.created_at,
                finished_at: r.finished_at,
                total: r.total,
                done: r.done,
                failed: r.failed,
                spend: Spend { cost_usd: r.cost, tokens: r.tokens },
                budget: Budget { usd: r.budget_usd, tokens: r.budget_tokens },
            })
            .collect())
    }

    /// Names a completed run's corpus. The run row is share-locked while the name is written, so
    /// a concurrent `retry-failed` or `cancel` either happens first (and the run is no longer
    /// completed) or finds the snapshot and is refused (migration 0010's trigger).
    pub async fn create_snapshot(
        self,
        name: &str,
        run_id: Uuid,
        note: Option<&str>,
    ) -> Result<SnapshotOutcome, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let state: RunState = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 FOR SHARE")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
        if state != RunState::Completed {
            return Ok(SnapshotOutcome::RunNotCompleted { state });
        }
        let res =
            sqlx::query("INSERT INTO snapshots (name, run_id, note) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(run_id)
                .bind(note)
                .execute(&mut *tx)
                .await?;
        if res.rows_affected() == 0 {
            let owner: Uuid = sqlx::query_scalar("SELECT run_id FROM snapshots WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            return Ok(SnapshotOutcome::NameTaken { run_id: owner });
        }
        tx.commit().await?;
        Ok(SnapshotOutcome::Created)
    }

    /// Every snapshot, newest first, with its run's done tasks by stage.
    pub async fn snapshots(self) -> Result<Vec<Snapshot>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.name, s.run_id, d.name AS dataset, d.version AS dataset_version, s.created_at, s.note,
                    COALESCE((SELECT jsonb_object_agg(stage, n) FROM (
                        SELECT stage, count(*) AS n FROM tasks WHERE run_id = s.run_id AND state = 'done' GROUP BY stage
                    ) c), '{}'::jsonb) AS done
             FROM snapshots s JOIN runs r ON r.id = s.run_id JOIN datasets d ON d.id = r.dataset_id
             ORDER BY s.created_at DESC, s.name",
        )
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Names of the snapshots of a run, in name order (empty: none).
    pub async fn snapshots_of_run(self, run_id: Uuid) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT name FROM snapshots WHERE run_id = $1 ORDER BY name")
            .bind(run_id)
            .fetch_all(self.store.pool())
            .await?)
    }

    /// The run a snapshot names.
    pub async fn snapshot_run(self, name: &str) -> Result<Uuid, StoreError> {
        sqlx::query_scalar("SELECT run_id FROM snapshots WHERE name = $1")
            .bind(name)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("snapshot {name:?} (see `reasonrec corpus snapshots`)")))
    }

    /// A run id or a snapshot name (names that parse as a UUID are read as run ids).
    pub async fn resolve_corpus(self, reference: &str) -> Result<CorpusRef, StoreError> {
        let (run_id, snapshot) = match reference.parse::<Uuid>() {
            Ok(id) => (id, None),
            Err(_) => (self.snapshot_run(reference).await?, Some(reference.to_string())),
        };
        let (dataset, dataset_version, state) = sqlx::query_as::<_, (String, i32, RunState)>(
            "SELECT d.name, d.version, r.state FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = $1",
        )
        .bind(run_id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))?;
        Ok(CorpusRef { run_id, snapshot, dataset, dataset_version, state })
    }

    /// Compares the done tasks of run `a` with those of run `b`, in one statement: tasks match
    /// by stage and by the dataset's own ids of their user, item and split, so runs of two
    /// versions of a dataset compare even where the dense ids in `tasks.subject` differ.
    /// `examples`: how many subjects to list per category.
    pub async fn corpus_diff(self, a: Uuid, b: Uuid, examples: i64) -> Result<CorpusDiff, StoreError> {
        let sql = format!(
            "WITH a AS MATERIALIZED ({}), b AS MATERIALIZED ({}),
             j AS MATERIALIZED (
                 SELECT COALESCE(a.stage, b.stage) AS stage, COALESCE(a.subject, b.subject) AS subject,
                        CASE WHEN a.subject IS NULL THEN 'added' WHEN b.subject IS NULL THEN 'removed'
                             WHEN a.output_key = b.output_key THEN 'unchanged' ELSE 'changed' END AS category,
                        a.label AS label_a, b.label AS label_b
                 FROM a FULL OUTER JOIN b ON a.stage = b.stage AND a.subject = b.subject)
             SELECT stage, category, count(*) AS n,
                    count(*) FILTER (WHERE category = 'changed' AND label_a IS DISTINCT FROM label_b) AS label_changed,
                    NULL::text AS subject, NULL::bool AS label_a, NULL::bool AS label_b
             FROM j GROUP BY stage, category
             UNION ALL
             SELECT stage, category, NULL, NULL, subject, label_a, label_b FROM (
                 SELECT j.*, row_number() OVER (PARTITION BY category ORDER BY stage, subject COLLATE \"C\") AS rn
                 FROM j WHERE category <> 'unchanged') e
             WHERE rn <= $3",
            DONE_BY_SOURCE_ID.replace("$run", "$1"),
            DONE_BY_SOURCE_ID.replace("$run", "$2"),
        );
        type DiffRow = (String, String, Option<i64>, Option<i64>, Option<String>, Option<bool>, Option<bool>);
        let rows =
            sqlx::query_as::<_, DiffRow>(&sql).bind(a).bind(b).bind(examples).fetch_all(self.store.pool()).await?;
        let mut diff = CorpusDiff::default();
        for (stage, category, n, label_changed, subject, label_a, label_b) in rows {
            match n {
                Some(n) => {
                    let c = diff.by_stage.entry(stage).or_default();
                    match category.as_str() {
                        "added" => c.added = n,
                        "removed" => c.removed = n,
                        "changed" => {
                            c.changed = n;
                            c.label_changed = label_changed.unwrap_or(0);
                        }
                        _ => c.unchanged = n,
                    }
                }
                None => diff.examples.entry(category).or_default().push(DiffExample {
                    stage,
                    subject: subject.unwrap_or_default(),
                    label_a,
                    label_b,
                }),
            }
        }
        for c in diff.by_stage.values() {
            diff.total.add(c);
        }
        for list in diff.examples.values_mut() {
            list.sort_by(|x, y| (&x.stage, &x.subject).cmp(&(&y.stage, &y.subject)));
        }
        Ok(diff)
    }
}

fn found(rows: u64, run_id: Uuid) -> Result<(), StoreError> {
    if rows == 0 { Err(StoreError::NotFound(format!("run {run_id}"))) } else { Ok(()) }
}

/// What a run has spent: its attempts, plus what its provider batches still open reserve (their
/// estimated cost, counted when they are submitted, replaced by the attempts when they end).
async fn spend<'e>(db: impl sqlx::PgExecutor<'e>, run_id: Uuid) -> Result<Spend, StoreError> {
    Ok(sqlx::query_as::<_, Spend>(
        "SELECT COALESCE(sum(cost_usd), 0)::float8
                  + (SELECT COALESCE(sum(reserved_usd), 0)::float8 FROM batches
                     WHERE run_id = $1 AND state IN ('submitting', 'submitted')) AS cost_usd,
                COALESCE(sum(input_tokens::int8 + output_tokens), 0)::int8 AS tokens
         FROM attempts WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_reached_at_its_limit_and_says_by_what() {
        let b = Budget { usd: Some(0.5), tokens: Some(1000) };
        assert_eq!(b.reached(&Spend { cost_usd: 0.49, tokens: 999 }), None);
        assert_eq!(
            b.reached(&Spend { cost_usd: 0.5, tokens: 10 }).as_deref(),
            Some("budget reached: $0.5000 of $0.5000")
        );
        assert_eq!(
            b.reached(&Spend { cost_usd: 0.7, tokens: 1200 }).as_deref(),
            Some("budget reached: $0.7000 of $0.5000, 1200 of 1000 tokens")
        );
        assert_eq!(Budget::default().reached(&Spend { cost_usd: 9.0, tokens: 9 }), None);
        assert_eq!(Budget::default().render(), "none");
        assert_eq!(Budget { usd: Some(0.000_2), tokens: None }.render(), "$0.000200");
    }
}
