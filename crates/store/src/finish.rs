//! Finishing many tasks in one transaction: the worker's commit batches.
//!
//! The invariant of [`crate::tasks`], for a batch: the ledger
//! row is inserted unless its key exists, a task moves to `done` (or `failed`) only from an
//! unfinished state, dependents are counted down once per newly finished upstream task, and
//! attempt rows are idempotent by attempt id. Task rows are locked in id order first, then the
//! dependents in id order, so concurrent batches queue instead of deadlocking.

use crate::error::StoreError;
use crate::pool::Store;
use crate::tasks::{Completion, NewOutput};
use reasonrec_core::attempt::AttemptRecord;
use reasonrec_core::key::OutputKey;
use std::collections::HashSet;
use uuid::Uuid;

/// How one task of a batch ends.
#[derive(Debug, Clone)]
pub enum FinishKind {
    /// Done with `key`; `output` is the new ledger row (None: an existing answer is reused).
    Complete { key: OutputKey, output: Option<Box<NewOutput>>, history_truncated: i32 },
    /// Failed permanently (or retries spent) with this error.
    Fail { error: String },
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub kind: FinishKind,
    pub attempts: Vec<AttemptRecord>,
}

/// What the batch did to one task (`newly_done` means newly *finished* for a failure).
pub type FinishOutcome = Completion;

impl Store {
    /// Finishes every task of `batch` in one transaction; results are in batch order. A task
    /// that appears twice is finished once (the second entry reports no change).
    pub async fn finish_tasks(&self, batch: &[Finish]) -> Result<Vec<FinishOutcome>, StoreError> {
        let mut seen = HashSet::with_capacity(batch.len());
        let first: Vec<bool> = batch.iter().map(|f| seen.insert(f.task_id)).collect();
        let mut ids: Vec<Uuid> = seen.into_iter().collect();
        ids.sort_unstable();

        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT id FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;

        // 1. New ledger rows.
        let outputs: Vec<(&Finish, &NewOutput)> = batch
            .iter()
            .zip(&first)
            .filter(|(_, first)| **first)
            .filter_map(|(f, _)| match &f.kind {
                FinishKind::Complete { output: Some(o), .. } => Some((f, o.as_ref())),
                _ => None,
            })
            .collect();
        let inserted: HashSet<Vec<u8>> = if outputs.is_empty() {
            HashSet::new()
        } else {
            let col = |g: fn(&NewOutput) -> String| outputs.iter().map(|(_, o)| g(o)).collect::<Vec<_>>();
            let keys: Vec<Vec<u8>> = outputs.iter().map(|(_, o)| o.key.as_bytes().to_vec()).collect();
            let params: Vec<serde_json::Value> = outputs.iter().map(|(_, o)| o.params.clone()).collect();
            let tin: Vec<i32> = outputs.iter().map(|(_, o)| o.input_tokens).collect();
            let tout: Vec<i32> = outputs.iter().map(|(_, o)| o.output_tokens).collect();
            let runs: Vec<Uuid> = outputs.iter().map(|(f, _)| f.run_id).collect();
            let tasks: Vec<Uuid> = outputs.iter().map(|(f, _)| f.task_id).collect();
            sqlx::query_scalar(
                "INSERT INTO outputs (key, stage, text, template, template_version, model, params,
                                      input_tokens, output_tokens, run_id, task_id)
                 SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                      $7::jsonb[], $8::int[], $9::int[], $10::uuid[], $11::uuid[])
                 ON CONFLICT (key) DO NOTHING
                 RETURNING key",
            )
            .bind(&keys)
            .bind(col(|o| o.stage.as_str().to_string()))
            .bind(col(|o| o.text.clone()))
            .bind(col(|o| o.template.clone()))
            .bind(col(|o| o.template_version.clone()))
            .bind(col(|o| o.model.clone()))
            .bind(&params)
            .bind(&tin)
            .bind(&tout)
            .bind(&runs)
            .bind(&tasks)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };

        // 2. Done and failed transitions.
        let (mut done_ids, mut done_keys, mut done_n, mut done_trunc) = (vec![], vec![], vec![], vec![]);
        let (mut fail_ids, mut fail_err, mut fail_n) = (vec![], vec![], vec![]);
        for (f, _) in batch.iter().zip(&first).filter(|(_, first)| **first) {
            let n = f.attempts.len() as i32;
            match &f.kind {
                FinishKind::Complete { key, history_truncated, .. } => {
                    done_ids.push(f.task_id);
                    done_keys.push(key.as_bytes().to_vec());
                    done_n.push(n);
                    done_trunc.push(*history_truncated);
                }
                FinishKind::Fail { error } => {
                    fail_ids.push(f.task_id);
                    fail_err.push(error.clone());
                    fail_n.push(n);
                }
            }
        }
        let mut finished: HashSet<Uuid> = HashSet::new();
        if !done_ids.is_empty() {
            let rows: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE tasks t SET state = 'done', output_key = u.key, done_at = now(), last_error = NULL,
                                    attempts = t.attempts + u.n, history_truncated = u.trunc
                 FROM UNNEST($1::uuid[], $2::bytea[], $3::int[], $4::int[]) AS u(id, key, n, trunc)
                 WHERE t.id = u.id AND t.state IN ('ready', 'published', 'failed')
                 RETURNING t.id",
            )
            .bind(&done_ids)
            .bind(&done_keys)
            .bind(&done_n)
            .bind(&done_trunc)
            .fetch_all(&mut *tx)
            .await?;
            finished.extend(rows);
        }
        if !fail_ids.is_empty() {
            let rows: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE tasks t SET state = 'failed', last_error = u.err, attempts = t.attempts + u.n, done_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(id, err, n)
                 WHERE t.id = u.id AND t.state IN ('ready', 'published')
                 RETURNING t.id",
            )
            .bind(&fail_ids)
            .bind(&fail_err)
            .bind(&fail_n)
            .fetch_all(&mut *tx)
            .await?;
            finished.extend(rows);
        }

        // 3. Attempt rows (idempotent by attempt id).
        let all: Vec<(&Finish, &AttemptRecord)> = batch
            .iter()
            .zip(&first)
            .filter(|(_, first)| **first)
            .flat_map(|(f, _)| f.attempts.iter().map(move |a| (f, a)))
            .collect();
        if !all.is_empty() {
            insert_attempt_rows(&mut tx, &all).await?;
        }

        // 4. Dependents of every newly finished task, locked in id order.
        if !finished.is_empty() {
            let mut upstream: Vec<Uuid> = finished.iter().copied().collect();
            upstream.sort_unstable();
            sqlx::query(
                "WITH released AS (
                     SELECT task_id, count(*)::int AS n FROM task_deps WHERE depends_on = ANY($1) GROUP BY task_id
                 ), locked AS (
                     SELECT t.id, r.n FROM tasks t JOIN released r ON r.task_id = t.id
                     WHERE t.state = 'waiting' ORDER BY t.id FOR UPDATE OF t
                 )
                 UPDATE tasks SET pending_deps = tasks.pending_deps - locked.n,
                                  state = CASE WHEN tasks.pending_deps <= locked.n THEN 'ready' ELSE tasks.state END
                 FROM locked WHERE tasks.id = locked.id AND tasks.state = 'waiting'",
            )
            .bind(&upstream)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        Ok(batch
            .iter()
            .zip(&first)
            .map(|(f, first)| {
                let newly_done = *first && finished.contains(&f.task_id);
                let output_inserted = *first
                    && matches!(&f.kind, FinishKind::Complete { output: Some(o), .. } if inserted.contains::<[u8]>(o.key.as_bytes()));
                Completion { newly_done, output_inserted }
            })
            .collect())
    }
}

async fn insert_attempt_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[(&Finish, &AttemptRecord)],
) -> Result<(), StoreError> {
    let task: Vec<Uuid> = rows.iter().map(|(f, _)| f.task_id).collect();
    let run: Vec<Uuid> = rows.iter().map(|(f, _)| f.run_id).collect();
    let id: Vec<Uuid> = rows.iter().map(|(_, a)| a.id).collect();
    let endpoint: Vec<&str> = rows.iter().map(|(_, a)| a.endpoint.as_str()).collect();
    let model: Vec<&str> = rows.iter().map(|(_, a)| a.model.as_str()).collect();
    let started: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|(_, a)| a.started_at).collect();
    let duration: Vec<i32> = rows.iter().map(|(_, a)| a.duration_ms).collect();
    let status: Vec<Option<i32>> = rows.iter().map(|(_, a)| a.http_status).collect();
    let class: Vec<Option<&str>> = rows.iter().map(|(_, a)| a.error_class.map(|c| c.as_str())).collect();
    let error: Vec<Option<&str>> = rows.iter().map(|(_, a)| a.error.as_deref()).collect();
    let tin: Vec<i32> = rows.iter().map(|(_, a)| a.input_tokens).collect();
    let tout: Vec<i32> = rows.iter().map(|(_, a)| a.output_tokens).collect();
    let cost: Vec<f64> = rows.iter().map(|(_, a)| a.cost_usd).collect();
    sqlx::query(
        "INSERT INTO attempts (task_id, run_id, attempt_id, endpoint, model, started_at, duration_ms, http_status,
                               error_class, error, input_tokens, output_tokens, cost_usd)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[],
                              $7::int[], $8::int[], $9::text[], $10::text[], $11::int[], $12::int[], $13::float8[])
         ON CONFLICT (attempt_id) DO NOTHING",
    )
    .bind(&task)
    .bind(&run)
    .bind(&id)
    .bind(&endpoint)
    .bind(&model)
    .bind(&started)
    .bind(&duration)
    .bind(&status)
    .bind(&class)
    .bind(&error)
    .bind(&tin)
    .bind(&tout)
    .bind(&cost)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
