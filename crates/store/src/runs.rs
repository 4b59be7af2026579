//! Runs, task planning, the outbox and progress counts.

use crate::error::StoreError;
use crate::pool::{Store, Tx};
use reasonrec_core::settings::RunRoute;
use reasonrec_core::stage::{RunState, Split, Stage, TaskState};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A task as the planner hands it to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: Uuid,
    pub stage: Stage,
    /// Natural key inside the run (e.g. `u12:i345:test`): planning twice never doubles a task.
    pub subject: String,
    pub user_id: Option<i32>,
    pub item_id: Option<i32>,
    pub split: Option<Split>,
    pub label: Option<bool>,
    pub input: serde_json::Value,
    /// Tasks of the same run whose outputs this one's prompt needs; it is `waiting` until they
    /// are done (or failed).
    pub deps: Vec<Uuid>,
    /// How many of `deps` are not finished at planning time: all of them, except in an
    /// incremental run, which carries some over already done. 0 = `ready`.
    pub pending_deps: i32,
    /// SHA-256 over what determines the prompt (`coordinator::fingerprint`); None when the
    /// planner could not compute it (such a task is never carried over later).
    pub fingerprint: Option<[u8; 32]>,
    /// Carried over from a previous run instead of being worked (incremental runs).
    pub carried: Option<Carried>,
}

/// A task an incremental run takes over finished from the previous run (`from`): no message,
/// no call, no `done_at` of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// Done with this ledger output (its key).
    Done { from: Uuid, output_key: [u8; 32] },
    /// Failed before and not tried again (`regenerate.redo_failed = false`).
    Failed { from: Uuid, error: String },
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub dataset_id: i64,
    pub state: RunState,
    pub settings: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why planning failed (state `failed`); None otherwise.
    pub failed_reason: Option<String>,
    /// When retention deleted the run's task rows (`run prune`); None: they are all there.
    pub pruned_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where its ready tasks go: RabbitMQ (`live`) or provider batches (`batch`).
    pub route: RunRoute,
    /// When it must be finished (`run create --deadline`, `[batch] deadline`).
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
}

/// Progress of a run, from the task and attempt tables.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunCounts {
    /// stage -> state -> count
    pub by_stage: BTreeMap<String, BTreeMap<String, i64>>,
    pub total: i64,
    pub published_ever: i64,
    /// Messages the broker confirmed for the run's tasks: `published_ever` when nothing was
    /// published twice.
    pub messages_published: i64,
    /// Times a finished task was re-planned because an upstream output arrived later.
    pub replanned: i64,
    pub done: i64,
    pub failed: i64,
    pub done_last_minute: i64,
    /// Seconds between the run's creation and its last completed task.
    pub elapsed_secs: f64,
    pub teacher_calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    /// error class -> attempts
    pub errors: BTreeMap<String, i64>,
    /// stage -> rejection code -> rejected answers
    pub rejections: BTreeMap<String, BTreeMap<String, i64>>,
    /// Tasks whose prompt had history cut to fit `sampling.max_prompt_words`.
    pub truncated_prompts: i64,
    /// Tasks failed without a teacher call because their prompt stayed over the cap.
    pub dropped_overlong: i64,
    /// Tasks an incremental run took over from an earlier run, done or failed (no call).
    pub carried_done: i64,
    pub carried_failed: i64,
}

impl RunCounts {
    pub fn state(&self, state: TaskState) -> i64 {
        self.by_stage.values().filter_map(|m| m.get(state.as_str())).sum()
    }
}

/// Run rows, task planning, the outbox and progress counts. Reached through [`Store::runs`].
#[derive(Debug, Clone, Copy)]
pub struct Runs<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Runs<'a> {
    /// Inserts planned tasks in one statement (one array per column, so no bind limit), then
    /// their dependency edges. While the run is `planning` calls may run concurrently and in any
    /// order: nothing reads its tasks before [`Runs::start`], and edges carry no foreign
    /// keys. A carried task is written `done` (or `failed`) as it is; the others `ready`
    /// when `pending_deps` is 0, else `waiting`. Returns how many tasks were new.
    pub async fn insert_tasks(self, run_id: Uuid, tasks: &[NewTask]) -> Result<u64, StoreError> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let c = TaskColumns::of(tasks);
        let mut tx = self.store.pool().begin().await?;
        let res = sqlx::query(
            "INSERT INTO tasks (id, run_id, stage, subject, user_id, item_id, split, label, input, pending_deps, state,
                                fingerprint, output_key, last_error, carried_from, released)
             SELECT u.id, $1, u.stage, u.subject, u.user_id, u.item_id, u.split, u.label, u.input::jsonb, u.deps,
                    COALESCE(u.state, CASE WHEN u.deps = 0 THEN 'ready' ELSE 'waiting' END),
                    u.fingerprint, u.output_key, u.last_error, u.carried_from, u.carried_from IS NOT NULL
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int[], $6::int[], $7::text[], $8::bool[], $9::text[],
                         $10::int[], $11::bytea[], $12::text[], $13::bytea[], $14::text[], $15::uuid[])
                  AS u(id, stage, subject, user_id, item_id, split, label, input, deps, fingerprint, state, output_key,
                       last_error, carried_from)
             ON CONFLICT (run_id, stage, subject) DO NOTHING",
        )
        .bind(run_id)
        .bind(&c.ids)
        .bind(&c.stages)
        .bind(&c.subjects)
        .bind(&c.users)
        .bind(&c.items)
        .bind(&c.splits)
        .bind(&c.labels)
        .bind(&c.inputs)
        .bind(&c.deps)
        .bind(&c.fingerprints)
        .bind(&c.states)
        .bind(&c.output_keys)
        .bind(&c.errors)
        .bind(&c.carried_from)
        .execute(&mut *tx)
        .await?;
        copy_edges(&mut tx, tasks).await?;
        tx.commit().await?;
        Ok(res.rows_affected())
    }

    /// Planning is over: the run's tasks may now be published and worked. Refreshes the planner
    /// statistics of the task tables first: a run can add millions of rows by bulk insert, and
    /// with stale statistics Postgres picked parallel sequential scans of `task_deps` for the
    /// per-task lookups (measured: 14 completions/s instead of hundreds).
    pub async fn start(self, run_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("ANALYZE tasks, task_deps").execute(self.store.pool()).await?;
        sqlx::query("UPDATE runs SET state = 'running', planned_at = now() WHERE id = $1 AND state = 'planning'")
            .bind(run_id)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    pub async fn get(self, run_id: Uuid) -> Result<RunRow, StoreError> {
        sqlx::query_as::<_, RunRow>(
            "SELECT id, dataset_id, state, settings, created_at, finished_at, failed_reason, pruned_at, route, deadline
             FROM runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id}")))
    }

    /// The most recently created run, for `run status` without an id.
    pub async fn latest(self) -> Result<Uuid, StoreError> {
        sqlx::query_scalar("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1")
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound("no run yet (run `reasonrec run create`)".into()))
    }

    /// Runs whose tasks may still need publishing or finishing.
    pub async fn active(self) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM runs WHERE state = 'running' ORDER BY priority DESC, created_at")
            .fetch_all(self.store.pool())
            .await?)
    }

    /// Outbox read: ready tasks of a run after `after` in id order (keyset pagination). For a
    /// run routed to a provider's Batch API (`runs.route = 'batch'`) only the tasks marked for a
    /// live re-ask (`live_reask`): the batch submitter claims the others (`store::batches`).
    pub async fn ready_tasks(self, run_id: Uuid, after: Uuid, limit: i64) -> Result<Vec<(Uuid, Stage)>, StoreError> {
        let rows = sqlx::query_as::<_, (Uuid, Stage)>(
            "(SELECT id, stage FROM tasks WHERE run_id = $1 AND state = 'ready' AND id > $2
                AND EXISTS (SELECT 1 FROM runs WHERE id = $1 AND route = 'live')
              ORDER BY id LIMIT $3)
             UNION ALL
             (SELECT id, stage FROM tasks WHERE run_id = $1 AND state = 'ready' AND live_reask AND id > $2
                AND EXISTS (SELECT 1 FROM runs WHERE id = $1 AND route = 'batch')
              ORDER BY id LIMIT $3)
             ORDER BY id",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows)
    }

    /// Tasks of a run that are published and not finished.
    pub async fn outstanding_tasks(self, run_id: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM tasks WHERE run_id = $1 AND state = 'published'")
            .bind(run_id)
            .fetch_one(self.store.pool())
            .await?)
    }

    /// Marks tasks published. Called only with ids whose publish the broker confirmed.
    /// Only `ready` rows move (and get `published_at` now); a task a worker already finished
    /// stays done and only records when it was first published. Every confirmed message counts
    /// in `publishes`. One statement (none for no ids). Returns how many rows it touched and the
    /// database's time of the mark (what `published_at` holds; None for no ids), which the
    /// outbox's departure log keys on.
    pub async fn mark_published(
        self,
        ids: &[Uuid],
    ) -> Result<(u64, Option<chrono::DateTime<chrono::Utc>>), StoreError> {
        if ids.is_empty() {
            return Ok((0, None));
        }
        let (n, at) = sqlx::query_as::<_, (i64, chrono::DateTime<chrono::Utc>)>(
            "WITH marked AS (
                 UPDATE tasks
                 SET state = CASE WHEN state = 'ready' THEN 'published' ELSE state END,
                     published_at = CASE WHEN state = 'ready' THEN now() ELSE COALESCE(published_at, now()) END,
                     publishes = publishes + 1
                 WHERE id = ANY($1)
                 RETURNING 1
             )
             SELECT count(*), now() FROM marked",
        )
        .bind(ids)
        .fetch_one(self.store.pool())
        .await?;
        Ok((n as u64, Some(at)))
    }

    /// The database's clock: timestamps the outbox compares with `published_at`.
    pub async fn now(self) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        Ok(sqlx::query_scalar("SELECT now()").fetch_one(self.store.pool()).await?)
    }

    /// Cancels a run: its unfinished tasks become `cancelled` (done ones stay). Messages still in
    /// the queue are acked and skipped by the workers. Returns how many tasks were cancelled.
    ///
    /// A commit batch locks its tasks in id order and then their dependents in id order, two
    /// passes, while this locks the run's unfinished tasks in one: a batch holding a user
    /// profile and waiting for a dependent of its item profile can still cross this. Postgres
    /// breaks the cycle by aborting one transaction; when it is this one, it is run again (the
    /// batch side retries its own), so an operator's cancel never ends in a deadlock error.
    pub async fn cancel(self, run_id: Uuid) -> Result<u64, StoreError> {
        let mut tries: u64 = 0;
        loop {
            match self.cancel_once(run_id).await {
                Err(e) if tries < 5 && e.is_transaction_conflict() => {
                    tries += 1;
                    tracing::debug!(%run_id, tries, error = %e, "run cancel crossed a commit batch; again");
                    // Let the batch that won finish before locking again.
                    tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
                }
                other => return other,
            }
        }
    }

    async fn cancel_once(self, run_id: Uuid) -> Result<u64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let run = sqlx::query(
            "UPDATE runs SET state = 'cancelled', finished_at = now() WHERE id = $1 AND state <> 'cancelled'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if run.rows_affected() == 0 {
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
                .bind(run_id)
                .fetch_one(&mut *tx)
                .await?;
            if !exists {
                return Err(StoreError::NotFound(format!("run {run_id}")));
            }
        }
        // Rows are locked in id order, as each pass of a commit batch locks them: most crossings
        // queue; the rest deadlock and are run again (see `cancel_run`).
        let res = sqlx::query(
            "WITH locked AS (
                 SELECT id FROM tasks WHERE run_id = $1 AND state IN ('waiting', 'ready', 'published', 'batched')
                 ORDER BY id FOR UPDATE
             )
             UPDATE tasks SET state = 'cancelled' FROM locked
             WHERE tasks.id = locked.id AND tasks.state IN ('waiting', 'ready', 'published', 'batched')",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(res.rows_affected())
    }

    /// Puts a run's failed tasks back to `ready` (their attempt history stays) and reopens the
    /// run. They stay `released`: their dependents were counted down when they failed and are
    /// not counted down again; a dependent that went ahead without the output is re-planned
    /// when the task succeeds ([`reasonrec_core::finishing`]). A task that failed in a live
    /// re-ask goes back to its run's route, afresh. Returns how many tasks were put back.
    pub async fn retry_failed(self, run_id: Uuid) -> Result<u64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let res = sqlx::query(
            "UPDATE tasks SET state = 'ready', last_error = NULL, published_at = NULL, carried_from = NULL,
                              live_reask = false
             WHERE run_id = $1 AND state = 'failed'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() > 0 {
            sqlx::query("UPDATE runs SET state = 'running', finished_at = NULL WHERE id = $1 AND state = 'completed'")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(res.rows_affected())
    }

    /// Published tasks (of any run) whose message is gone go back to `ready`, so the outbox
    /// publishes them again: those published at or before `published_before`, which the
    /// outbox's departure evidence (`coordinator::departures`) says left the queue long enough
    /// ago to have been finished by now.
    /// A duplicate delivery, should the old message still exist, is absorbed by the worker.
    pub async fn requeue_departed(self, published_before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let res = sqlx::query("UPDATE tasks SET state = 'ready' WHERE state = 'published' AND published_at <= $1")
            .bind(published_before)
            .execute(self.store.pool())
            .await?;
        Ok(res.rows_affected())
    }

    /// Refreshes the planner's statistics of `tasks`. A run starts with every task `ready`; as
    /// they move on, statistics taken at the start make the planner walk the primary key past
    /// every finished task to find ready ones (measured: 4 ms -> 1.2 s per outbox page on a
    /// 100k-task run) instead of using the partial outbox index.
    pub async fn analyze_tasks(self) -> Result<(), StoreError> {
        sqlx::query("ANALYZE tasks").execute(self.store.pool()).await?;
        Ok(())
    }

    /// Marks the run completed when no task is left to do. Returns the run's state.
    pub async fn refresh_state(self, run_id: Uuid) -> Result<RunState, StoreError> {
        sqlx::query(
            "UPDATE runs SET state = 'completed', finished_at = now()
             WHERE id = $1 AND state = 'running'
               AND NOT EXISTS (SELECT 1 FROM tasks WHERE run_id = $1 AND state IN ('waiting', 'ready', 'published', 'batched'))",
        )
        .bind(run_id)
        .execute(self.store.pool())
        .await?;
        Ok(self.get(run_id).await?.state)
    }

    /// What the coordinator's run gauges show: the run's tasks by state and its spend. Two
    /// statements (`run_counts` runs seven, three of them over every task of the run).
    pub async fn gauges(self, run_id: Uuid) -> Result<(BTreeMap<String, i64>, f64), StoreError> {
        let by_state =
            sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM tasks WHERE run_id = $1 GROUP BY 1")
                .bind(run_id)
                .fetch_all(self.store.pool())
                .await?
                .into_iter()
                .collect();
        let cost: f64 = sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0)::float8 FROM attempts WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(self.store.pool())
            .await?;
        Ok((by_state, cost))
    }

    pub async fn counts(self, run_id: Uuid) -> Result<RunCounts, StoreError> {
        let mut c = RunCounts::default();
        let rows = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT stage, state, count(*) FROM tasks WHERE run_id = $1 GROUP BY 1, 2",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?;
        for (stage, state, n) in rows {
            c.total += n;
            match state.as_str() {
                "done" => c.done += n,
                "failed" => c.failed += n,
                _ => {}
            }
            c.by_stage.entry(stage).or_default().insert(state, n);
        }
        (c.truncated_prompts, c.dropped_overlong, c.carried_done, c.carried_failed) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE history_truncated > 0),
                    count(*) FILTER (WHERE state = 'failed' AND last_error LIKE 'prompt too long%'),
                    count(*) FILTER (WHERE carried_from IS NOT NULL AND state = 'done'),
                    count(*) FILTER (WHERE carried_from IS NOT NULL AND state = 'failed')
             FROM tasks WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_one(self.store.pool())
        .await?;
        (c.published_ever, c.messages_published, c.replanned, c.done_last_minute, c.elapsed_secs) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
                    COALESCE(sum(publishes), 0)::int8, COALESCE(sum(replanned), 0)::int8,
                    count(*) FILTER (WHERE done_at > now() - interval '60 seconds'),
                    COALESCE(EXTRACT(EPOCH FROM (max(done_at) - (SELECT created_at FROM runs WHERE id = $1)))::float8, 0)
             FROM tasks WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_one(self.store.pool())
        .await?;
        (c.teacher_calls, c.input_tokens, c.output_tokens, c.cost_usd) = sqlx::query_as(
            "SELECT count(*), COALESCE(sum(input_tokens), 0)::int8, COALESCE(sum(output_tokens), 0)::int8,
                    COALESCE(sum(cost_usd), 0)::float8
             FROM attempts WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_one(self.store.pool())
        .await?;
        c.errors = sqlx::query_as::<_, (String, i64)>(
            "SELECT error_class, count(*) FROM attempts WHERE run_id = $1 AND error_class IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .collect();
        let rows = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT t.stage, split_part(a.error, ':', 1), count(*) FROM attempts a JOIN tasks t ON t.id = a.task_id
             WHERE a.run_id = $1 AND a.error_class = 'rejected' GROUP BY 1, 2",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?;
        for (stage, code, n) in rows {
            c.rejections.entry(stage).or_default().insert(code, n);
        }
        Ok(c)
    }
}

/// Planned tasks as one array per column of `tasks` (what [`Runs::insert_tasks`] binds).
struct TaskColumns<'a> {
    ids: Vec<Uuid>,
    stages: Vec<&'a str>,
    subjects: Vec<&'a str>,
    users: Vec<Option<i32>>,
    items: Vec<Option<i32>>,
    splits: Vec<Option<&'a str>>,
    labels: Vec<Option<bool>>,
    inputs: Vec<String>,
    deps: Vec<i32>,
    fingerprints: Vec<Option<&'a [u8]>>,
    /// `done` / `failed` for a carried task; None: `ready` or `waiting` by its deps.
    states: Vec<Option<&'a str>>,
    output_keys: Vec<Option<&'a [u8]>>,
    errors: Vec<Option<&'a str>>,
    carried_from: Vec<Option<Uuid>>,
}

impl<'a> TaskColumns<'a> {
    fn of(tasks: &'a [NewTask]) -> Self {
        let n = tasks.len();
        let mut c = Self {
            ids: Vec::with_capacity(n),
            stages: Vec::with_capacity(n),
            subjects: Vec::with_capacity(n),
            users: Vec::with_capacity(n),
            items: Vec::with_capacity(n),
            splits: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            inputs: Vec::with_capacity(n),
            deps: Vec::with_capacity(n),
            fingerprints: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            output_keys: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            carried_from: Vec::with_capacity(n),
        };
        for t in tasks {
            c.ids.push(t.id);
            c.stages.push(t.stage.as_str());
            c.subjects.push(t.subject.as_str());
            c.users.push(t.user_id);
            c.items.push(t.item_id);
            c.splits.push(t.split.map(Split::as_str));
            c.labels.push(t.label);
            c.inputs.push(t.input.to_string());
            c.deps.push(t.pending_deps);
            c.fingerprints.push(t.fingerprint.as_ref().map(|f| f.as_slice()));
            let (state, output_key, error, from) = match &t.carried {
                None => (None, None, None, None),
                Some(Carried::Done { from, output_key }) => {
                    (Some("done"), Some(output_key.as_slice()), None, Some(*from))
                }
                Some(Carried::Failed { from, error }) => (Some("failed"), None, Some(error.as_str()), Some(*from)),
            };
            c.states.push(state);
            c.output_keys.push(output_key);
            c.errors.push(error);
            c.carried_from.push(from);
        }
        c
    }
}

/// Writes the tasks' dependency edges by COPY: the planner never repeats an edge, and COPY is
/// the cheapest bulk path.
async fn copy_edges(tx: &mut Tx<'_>, tasks: &[NewTask]) -> Result<(), StoreError> {
    let edges: usize = tasks.iter().map(|t| t.deps.len()).sum();
    if edges == 0 {
        return Ok(());
    }
    let mut buf = String::with_capacity(edges * 74);
    for t in tasks {
        for d in &t.deps {
            use std::fmt::Write;
            let _ = writeln!(buf, "{}\t{}", t.id, d);
        }
    }
    let mut copy = tx.copy_in_raw("COPY task_deps (task_id, depends_on) FROM STDIN").await?;
    if let Err(e) = copy.send(buf.as_bytes()).await {
        let _ = copy.abort("reasonrec planning failed").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}
