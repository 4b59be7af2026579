//! Finishing tasks in one transaction: the worker's commit batches and dead letters.
//!
//! The rules are the pure state machine of [`reasonrec_core::finishing`]; this module locks the
//! rows, decides every entry in batch order against the row as the entries before it left it,
//! and writes the result: ledger rows (unless their key exists), the moves, every entry's
//! attempt rows (idempotent by attempt id), the dependents counted down once per upstream task
//! (`released`), and the dependents re-planned when an upstream task that had released them
//! succeeds later. Task rows are locked in id order first, then the dependents in id order, so
//! concurrent batches (and `run cancel`) queue instead of deadlocking.

use crate::error::StoreError;
use crate::pool::{Store, Tx};
use crate::tasks::{Completion, NewOutput};
use reasonrec_core::attempt::AttemptRecord;
use reasonrec_core::finishing::{Decision, FinishEvent, Kept, TaskRow, decide};
use reasonrec_core::key::OutputKey;
use reasonrec_core::stage::TaskState;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// How one task of a batch ends.
#[derive(Debug, Clone)]
pub enum FinishKind {
    /// Done with `key`; `output` is the new ledger row (None: an existing answer is reused).
    Complete { key: OutputKey, output: Option<Box<NewOutput>>, history_truncated: i32 },
    /// Failed permanently (or retries spent) with this error.
    Fail { error: String },
    /// The prompt cannot be rendered from the finish's `inputs_version` (a judge whose reasoning
    /// has no answer): fails the task unless its inputs changed since (then it is superseded).
    Unrenderable { error: String },
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub task_id: Uuid,
    pub run_id: Uuid,
    /// The version of the task's inputs the answer was rendered from (`tasks.inputs_version`).
    pub inputs_version: i32,
    pub kind: FinishKind,
    pub attempts: Vec<AttemptRecord>,
}

impl Finish {
    fn event(&self) -> FinishEvent {
        match self.kind {
            FinishKind::Complete { .. } => FinishEvent::Complete { inputs_version: self.inputs_version },
            FinishKind::Fail { .. } => FinishEvent::Fail,
            FinishKind::Unrenderable { .. } => FinishEvent::Unrenderable { inputs_version: self.inputs_version },
        }
    }
}

/// What the batch did to one task.
pub type FinishOutcome = Completion;

/// The last move of a task in a batch, and what its moves asked for the dependents.
struct Move<'a> {
    to: TaskState,
    finish: &'a Finish,
    release: bool,
    replan: bool,
}

/// The one transaction that finishes tasks, and the attempt rows. Reached through [`Store::finishing`].
#[derive(Debug, Clone, Copy)]
pub struct Finishing<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Finishing<'a> {
    /// Finishes every task of `batch` in one transaction; results are in batch order. Entries
    /// for one task are decided in order (the second copy of a completion finds it done), and
    /// every entry's attempts are recorded.
    pub async fn finish_tasks(self, batch: &[Finish]) -> Result<Vec<FinishOutcome>, StoreError> {
        let mut ids: Vec<Uuid> = batch.iter().map(|f| f.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut tx = self.store.pool().begin().await?;
        let mut rows = lock_rows(&mut tx, &ids).await?;

        let decisions: Vec<Option<Decision>> =
            batch.iter().map(|f| rows.get_mut(&f.task_id).map(|row| decide(row, f.event()))).collect();
        let mut moves: HashMap<Uuid, Move> = HashMap::new();
        for (f, d) in batch.iter().zip(&decisions) {
            if let Some(Decision::Move { to, release, replan }) = *d {
                let m = moves.entry(f.task_id).or_insert(Move { to, finish: f, release: false, replan: false });
                (m.to, m.finish) = (to, f);
                m.release |= release;
                m.replan |= replan;
            }
        }

        let inserted = insert_outputs(&mut tx, batch).await?;
        let rows_of_attempts: Vec<(Uuid, Uuid, &AttemptRecord)> =
            batch.iter().flat_map(|f| f.attempts.iter().map(move |a| (f.task_id, f.run_id, a))).collect();
        let mut new_attempts = insert_attempt_rows(&mut tx, &rows_of_attempts).await?;
        write_moves(&mut tx, &moves, &mut new_attempts).await?;
        count_attempts(&mut tx, &new_attempts).await?;
        let sorted = |pick: fn(&Move) -> bool| {
            let mut v: Vec<Uuid> = moves.iter().filter(|(_, m)| pick(m)).map(|(id, _)| *id).collect();
            v.sort_unstable();
            v
        };
        release_dependents(&mut tx, &sorted(|m| m.release)).await?;
        replan_dependents(&mut tx, &sorted(|m| m.replan)).await?;
        tx.commit().await?;

        let mut credited: HashSet<&[u8]> = HashSet::new();
        Ok(batch
            .iter()
            .zip(decisions)
            .map(|(f, d)| {
                let output_inserted = match &f.kind {
                    FinishKind::Complete { output: Some(o), .. } => {
                        inserted.contains(o.key.as_bytes()) && credited.insert(o.key.as_bytes())
                    }
                    _ => false,
                };
                Completion {
                    newly_done: matches!(d, Some(Decision::Move { .. })),
                    output_inserted,
                    superseded: d == Some(Decision::Keep(Kept::Superseded)),
                }
            })
            .collect())
    }
}

/// Locks the rows of `ids` (sorted) in id order; returns what the state machine reads of them.
async fn lock_rows(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, TaskRow>, StoreError> {
    let rows = sqlx::query_as::<_, (Uuid, TaskState, bool, i32, bool)>(
        "SELECT t.id, t.state, t.released, t.inputs_version, r.state IN ('running', 'paused') AS run_open
         FROM tasks t JOIN runs r ON r.id = t.run_id
         WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE OF t",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, state, released, inputs_version, run_open)| {
            (id, TaskRow { state, released, inputs_version, run_open })
        })
        .collect())
}

/// Inserts the batch's new answers into the ledger, each key once, whether or not its task
/// moves: the answer is paid for and any task asking the same question later reuses it.
/// Returns the keys that were new.
async fn insert_outputs(tx: &mut Tx<'_>, batch: &[Finish]) -> Result<HashSet<Vec<u8>>, StoreError> {
    let mut seen = HashSet::new();
    let outputs: Vec<(&Finish, &NewOutput)> = batch
        .iter()
        .filter_map(|f| match &f.kind {
            FinishKind::Complete { output: Some(o), .. } => Some((f, o.as_ref())),
            _ => None,
        })
        .filter(|(_, o)| seen.insert(o.key))
        .collect();
    if outputs.is_empty() {
        return Ok(HashSet::new());
    }
    let col = |g: fn(&NewOutput) -> String| outputs.iter().map(|(_, o)| g(o)).collect::<Vec<_>>();
    let keys: Vec<Vec<u8>> = outputs.iter().map(|(_, o)| o.key.as_bytes().to_vec()).collect();
    let params: Vec<serde_json::Value> = outputs.iter().map(|(_, o)| o.params.clone()).collect();
    let tin: Vec<i32> = outputs.iter().map(|(_, o)| o.input_tokens).collect();
    let tout: Vec<i32> = outputs.iter().map(|(_, o)| o.output_tokens).collect();
    let runs: Vec<Uuid> = outputs.iter().map(|(f, _)| f.run_id).collect();
    let tasks: Vec<Uuid> = outputs.iter().map(|(f, _)| f.task_id).collect();
    let scores: Vec<Option<i16>> = outputs.iter().map(|(_, o)| o.score).collect();
    let words: Vec<i32> = outputs
        .iter()
        .map(|(_, o)| i32::try_from(reasonrec_core::validate::word_count(&o.text)).unwrap_or(i32::MAX))
        .collect();
    Ok(sqlx::query_scalar(
        "INSERT INTO outputs (key, stage, text, template, template_version, model, params,
                              input_tokens, output_tokens, run_id, task_id, score, words)
         SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::jsonb[], $8::int[], $9::int[], $10::uuid[], $11::uuid[], $12::smallint[],
                              $13::int[])
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
    .bind(&scores)
    .bind(&words)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect())
}

/// Writes each moved task's final state of the batch (every moved task is `released`), adding
/// its newly recorded attempts (taken out of `new_attempts`) in the same update.
async fn write_moves(
    tx: &mut Tx<'_>,
    moves: &HashMap<Uuid, Move<'_>>,
    new_attempts: &mut HashMap<Uuid, i32>,
) -> Result<(), StoreError> {
    let (mut done_ids, mut done_keys, mut done_trunc, mut done_n) = (vec![], vec![], vec![], vec![]);
    let (mut fail_ids, mut fail_err, mut fail_n) = (vec![], vec![], vec![]);
    for (id, m) in moves {
        let n = new_attempts.remove(id).unwrap_or(0);
        match (&m.finish.kind, m.to) {
            (FinishKind::Complete { key, history_truncated, .. }, TaskState::Done) => {
                done_ids.push(*id);
                done_keys.push(key.as_bytes().to_vec());
                done_trunc.push(*history_truncated);
                done_n.push(n);
            }
            (FinishKind::Fail { error } | FinishKind::Unrenderable { error }, TaskState::Failed) => {
                fail_ids.push(*id);
                fail_err.push(error.clone());
                fail_n.push(n);
            }
            (_, to) => return Err(StoreError::Corrupt(format!("task {id}: a finish moved it to {}", to.as_str()))),
        }
    }
    if !done_ids.is_empty() {
        sqlx::query(
            "UPDATE tasks t SET state = 'done', output_key = u.key, done_at = now(), last_error = NULL,
                                history_truncated = u.trunc, released = true, attempts = t.attempts + u.n
             FROM UNNEST($1::uuid[], $2::bytea[], $3::int[], $4::int[]) AS u(id, key, trunc, n)
             WHERE t.id = u.id",
        )
        .bind(&done_ids)
        .bind(&done_keys)
        .bind(&done_trunc)
        .bind(&done_n)
        .execute(&mut **tx)
        .await?;
    }
    if !fail_ids.is_empty() {
        sqlx::query(
            "UPDATE tasks t SET state = 'failed', last_error = u.err, done_at = now(), released = true,
                                attempts = t.attempts + u.n
             FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(id, err, n)
             WHERE t.id = u.id",
        )
        .bind(&fail_ids)
        .bind(&fail_err)
        .bind(&fail_n)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl<'a> Finishing<'a> {
    /// Records the attempts of a call that finished nothing (the task went back to the queue):
    /// every paid call is in the ledger, whatever became of its task.
    pub async fn record_attempts(
        self,
        task_id: Uuid,
        run_id: Uuid,
        attempts: &[AttemptRecord],
    ) -> Result<(), StoreError> {
        let rows: Vec<(Uuid, Uuid, &AttemptRecord)> = attempts.iter().map(|a| (task_id, run_id, a)).collect();
        self.record_attempt_rows(&rows).await
    }

    /// Records attempts of many tasks, given as (task, run, attempt), in one transaction
    /// (idempotent by attempt id): a batch's lines that finished nothing.
    pub async fn record_attempt_rows(self, rows: &[(Uuid, Uuid, &AttemptRecord)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.pool().begin().await?;
        let new_attempts = insert_attempt_rows(&mut tx, rows).await?;
        count_attempts(&mut tx, &new_attempts).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Records attempts given as (task, run, attempt) (a task twice in a batch keeps both entries'
/// paid calls); returns how many were new per task (a retried commit counts nothing twice).
async fn insert_attempt_rows(
    tx: &mut Tx<'_>,
    rows: &[(Uuid, Uuid, &AttemptRecord)],
) -> Result<HashMap<Uuid, i32>, StoreError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let task: Vec<Uuid> = rows.iter().map(|(t, _, _)| *t).collect();
    let run: Vec<Uuid> = rows.iter().map(|(_, r, _)| *r).collect();
    let id: Vec<Uuid> = rows.iter().map(|(_, _, a)| a.id).collect();
    let endpoint: Vec<&str> = rows.iter().map(|(_, _, a)| a.endpoint.as_str()).collect();
    let model: Vec<&str> = rows.iter().map(|(_, _, a)| a.model.as_str()).collect();
    let started: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|(_, _, a)| a.started_at).collect();
    let duration: Vec<i32> = rows.iter().map(|(_, _, a)| a.duration_ms).collect();
    let status: Vec<Option<i32>> = rows.iter().map(|(_, _, a)| a.http_status).collect();
    let class: Vec<Option<&str>> = rows.iter().map(|(_, _, a)| a.error_class.map(|c| c.as_str())).collect();
    let error: Vec<Option<&str>> = rows.iter().map(|(_, _, a)| a.error.as_deref()).collect();
    let tin: Vec<i32> = rows.iter().map(|(_, _, a)| a.input_tokens).collect();
    let tout: Vec<i32> = rows.iter().map(|(_, _, a)| a.output_tokens).collect();
    let cost: Vec<f64> = rows.iter().map(|(_, _, a)| a.cost_usd).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO attempts (task_id, run_id, attempt_id, endpoint, model, started_at, duration_ms, http_status,
                               error_class, error, input_tokens, output_tokens, cost_usd)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[],
                              $7::int[], $8::int[], $9::text[], $10::text[], $11::int[], $12::int[], $13::float8[])
         ON CONFLICT (attempt_id) DO NOTHING
         RETURNING task_id",
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
    .fetch_all(&mut **tx)
    .await?;
    let mut per_task = HashMap::new();
    for t in inserted {
        *per_task.entry(t).or_insert(0) += 1;
    }
    Ok(per_task)
}

/// Adds new attempts to `tasks.attempts` for tasks that did not move (a superseded answer, a
/// copy after completion): the moved ones counted theirs in [`write_moves`].
async fn count_attempts(tx: &mut Tx<'_>, new_attempts: &HashMap<Uuid, i32>) -> Result<(), StoreError> {
    if new_attempts.is_empty() {
        return Ok(());
    }
    let mut pairs: Vec<(Uuid, i32)> = new_attempts.iter().map(|(id, n)| (*id, *n)).collect();
    pairs.sort_unstable();
    let (ids, ns): (Vec<Uuid>, Vec<i32>) = pairs.into_iter().unzip();
    sqlx::query(
        "UPDATE tasks t SET attempts = t.attempts + u.n FROM UNNEST($1::uuid[], $2::int[]) AS u(id, n) WHERE t.id = u.id",
    )
    .bind(&ids)
    .bind(&ns)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The first finish of each of `upstream` (sorted): count each waiting dependent down once per
/// edge, and make it ready when nothing is left. Dependents are locked in id order first.
async fn release_dependents(tx: &mut Tx<'_>, upstream: &[Uuid]) -> Result<(), StoreError> {
    if upstream.is_empty() {
        return Ok(());
    }
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
    .bind(upstream)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A later success of each of `upstream` (sorted), which had released its dependents before:
/// finished dependents go back to `ready` to be worked with the new output (reason
/// `upstream_changed`); ready, published and batched ones get a new inputs version, so an answer
/// rendered without the output is superseded. Waiting ones need nothing: they render later.
async fn replan_dependents(tx: &mut Tx<'_>, upstream: &[Uuid]) -> Result<(), StoreError> {
    if upstream.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH locked AS (
             SELECT t.id, t.state IN ('done', 'failed') AS finished FROM tasks t
             WHERE t.id IN (SELECT task_id FROM task_deps WHERE depends_on = ANY($1))
               AND t.state IN ('ready', 'published', 'batched', 'done', 'failed')
             ORDER BY t.id FOR UPDATE OF t
         )
         UPDATE tasks SET inputs_version = tasks.inputs_version + 1,
                          replanned = tasks.replanned + locked.finished::int,
                          state = CASE WHEN locked.finished THEN 'ready' ELSE tasks.state END,
                          output_key = CASE WHEN locked.finished THEN NULL ELSE tasks.output_key END,
                          last_error = CASE WHEN locked.finished THEN 'upstream_changed' ELSE tasks.last_error END,
                          done_at = CASE WHEN locked.finished THEN NULL ELSE tasks.done_at END,
                          carried_from = CASE WHEN locked.finished THEN NULL ELSE tasks.carried_from END,
                          live_reask = tasks.live_reask AND NOT locked.finished
         FROM locked WHERE tasks.id = locked.id",
    )
    .bind(upstream)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
