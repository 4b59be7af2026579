//! Provider batches (issue 17; sql/0015_batches.sql): the rows the batch submitter
//! (`reasonrec_worker::batch`) writes before the provider hears of a batch, and reads back to
//! reconcile, poll and finish it.
//!
//! A batch's life: `building` (its tasks claimed `ready` -> `batched` in the transaction that
//! writes the row and its lines) -> `submitting` (rendered; recorded before the create call)
//! -> `submitted` (the provider's id recorded) -> `ended` (results finished) | `failed` (the
//! provider refused it as a whole; its tasks went back to `ready`). One submitter works an
//! endpoint at a time ([`Locks::endpoint_lock`]), so a `building` or `submitting` row it did
//! not write itself was left by one that died.

use crate::error::StoreError;
use crate::pool::{Store, Tx};
use reasonrec_core::key::OutputKey;
use reasonrec_core::settings::Protocol;
use reasonrec_core::stage::{RunState, Stage};
use std::collections::HashSet;
use uuid::Uuid;

/// The state of a batch row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Building,
    Submitting,
    Submitted,
    Ended,
    Failed,
}

reasonrec_core::vocabulary!(BatchState, "batch state", {
    Building => "building",
    Submitting => "submitting",
    Submitted => "submitted",
    Ended => "ended",
    Failed => "failed",
});

/// An open batch row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub run_id: Uuid,
    pub run_state: RunState,
    pub state: BatchState,
    pub lines: i32,
    pub provider_id: Option<String>,
    pub submit_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub submitted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub create_attempted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub cancel_requested: bool,
    /// The run was spilled to live endpoints (`route = 'live'`) and must be done by this time.
    pub spilled_deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// A second copy at the provider of this batch row (sql/0017): cancelled, its results
    /// recorded; its results' custom ids name that row.
    pub copy_of: Option<Uuid>,
}

/// A batch found at the provider ([`Batches::adopt`]).
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub provider_id: &'a str,
    pub input_file_id: Option<&'a str>,
    pub status: &'a str,
}

/// A run the batch submitter feeds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRun {
    pub id: Uuid,
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Some of its tasks still wait for inputs (batches then stay small).
    pub waiting: bool,
}

/// A running batch run and the batch work it has left ([`Batches::deadlines`],
/// [`Batches::work`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadlineRun {
    pub id: Uuid,
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Tasks not yet in a batch (ready or waiting for inputs).
    pub unsent: i64,
    /// Tasks in its open batches.
    pub batched: i64,
    /// When each open batch was submitted (None: not yet).
    pub open_submitted: Vec<Option<chrono::DateTime<chrono::Utc>>>,
}

/// A task claimed into a new batch, with what a re-ask carries over from its last rejected line.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedLine {
    pub line: i32,
    pub task_id: Uuid,
    pub inputs_version: i32,
    pub reasks: i32,
    /// `[[answer, feedback], ...]`: the answers rejected so far and the validator's reasons.
    #[sqlx(try_from = "Conversation")]
    pub conversation: Vec<(String, String)>,
}

/// What the results of a line need of it (joined with its task).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineRow {
    pub line: i32,
    pub task_id: Uuid,
    pub run_id: Uuid,
    pub stage: Stage,
    pub label: Option<bool>,
    pub inputs_version: i32,
    pub reasks: i32,
    #[sqlx(try_from = "Conversation")]
    pub conversation: Vec<(String, String)>,
    #[sqlx(try_from = "LineKey")]
    pub output_key: Option<OutputKey>,
    pub template: Option<String>,
    pub template_version: Option<String>,
    pub history_truncated: i32,
    pub prompt_tokens: i32,
    pub outcome: Option<String>,
    /// The task is `batched` in this very batch (not finished, cancelled, put back or claimed
    /// into a later batch since).
    pub held_here: bool,
    /// Lines of the task that came back `errored` so far (any batch).
    pub errors_before: i32,
}

/// A line's outcome word and, for a rejected answer, the conversation the task's next line
/// carries.
pub type LineOutcome = (i32, &'static str, Option<Vec<(String, String)>>);

/// A run's batches in one state (`run status`).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct BatchCount {
    pub state: BatchState,
    pub batches: i64,
    pub lines: i64,
    pub done_lines: i64,
    pub usd: f64,
}

/// What rendering wrote of a line.
#[derive(Debug, Clone)]
pub struct RenderedLine {
    pub line: i32,
    pub output_key: OutputKey,
    pub template: String,
    pub template_version: String,
    pub history_truncated: i32,
    pub prompt_tokens: i32,
}

/// `batch_lines.conversation` as a column (JSONB `[[answer, feedback], ...]`): NULL, or a value
/// that does not parse, reads as no conversation (the re-ask then starts afresh).
struct Conversation(Vec<(String, String)>);

impl sqlx::Type<sqlx::Postgres> for Conversation {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <serde_json::Value as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <serde_json::Value as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Conversation {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if sqlx::ValueRef::is_null(&value) {
            return Ok(Conversation(Vec::new()));
        }
        let v = <serde_json::Value as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(Conversation(serde_json::from_value(v).unwrap_or_default()))
    }
}

impl From<Conversation> for Vec<(String, String)> {
    fn from(c: Conversation) -> Self {
        c.0
    }
}

/// `batch_lines.output_key`: NULL until the line is rendered, then a 32-byte content key.
struct LineKey(Option<OutputKey>);

impl sqlx::Type<sqlx::Postgres> for LineKey {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<u8> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Vec<u8> as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for LineKey {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if sqlx::ValueRef::is_null(&value) {
            return Ok(LineKey(None));
        }
        let bytes = <&[u8] as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        let key = OutputKey::from_slice(bytes).ok_or("batch line output key is not 32 bytes")?;
        Ok(LineKey(Some(key)))
    }
}

impl From<LineKey> for Option<OutputKey> {
    fn from(k: LineKey) -> Self {
        k.0
    }
}

/// The outcome of a line whose answer was rejected and is re-asked in the task's next batch.
pub const REJECTED: &str = "rejected";
/// The outcome of a line whose answer was rejected and is re-asked by the live endpoints
/// (`[[teacher.endpoints]] reask = "live"`): the task goes back `ready` with `live_reask`.
pub const REJECTED_LIVE: &str = "rejected_live";

/// A re-ask carried on from a task's latest rejected line.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CarriedReask {
    /// The inputs the rejected line was rendered from: a task whose inputs changed since starts
    /// afresh.
    pub inputs_version: i32,
    /// Re-asks made once this one is asked (the rejected line's count plus one).
    pub reasks: i32,
    /// `[[answer, feedback], ...]` so far, the rejected line's own answer last.
    #[sqlx(try_from = "Conversation")]
    pub conversation: Vec<(String, String)>,
}

/// Per task of `ids` whose latest settled line (lines sent back unanswered, lines of a task no
/// longer held by their batch and lines of second copies aside) has outcome `outcome`: the
/// re-ask it carries on. The one definition of "the task's last rejected line",
/// for the next batch ([`REJECTED`]) and the live worker ([`REJECTED_LIVE`]).
async fn carried_reasks(
    db: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
    outcome: &str,
) -> Result<std::collections::HashMap<Uuid, CarriedReask>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Latest {
        task_id: Uuid,
        #[sqlx(flatten)]
        reask: CarriedReask,
    }
    let rows = sqlx::query_as::<_, Latest>(
        "SELECT task_id, inputs_version, reasks + 1 AS reasks, conversation FROM (
             SELECT DISTINCT ON (l.task_id) l.task_id, l.inputs_version, l.reasks, l.conversation, l.outcome
             FROM batch_lines l JOIN batches b ON b.id = l.batch_id
             WHERE l.task_id = ANY($1) AND b.copy_of IS NULL AND l.outcome IS NOT NULL
               AND l.outcome NOT IN ('expired', 'canceled', 'errored', 'deferred', 'stale')
             ORDER BY l.task_id, b.created_at DESC, l.line DESC
         ) latest WHERE outcome = $2",
    )
    .bind(ids)
    .bind(outcome)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|l| (l.task_id, l.reask)).collect())
}

/// Provider batches: claiming, submitting, reconciling and settling. Reached through [`Store::batches`].
#[derive(Debug, Clone, Copy)]
pub struct Batches<'a> {
    pub(crate) store: &'a Store,
}

impl<'a> Batches<'a> {
    /// Running runs routed to a Batch API that have ready tasks, by priority then age.
    pub async fn runs(self) -> Result<Vec<BatchRun>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.id, r.deadline,
                    EXISTS (SELECT 1 FROM tasks w WHERE w.run_id = r.id AND w.state = 'waiting') AS waiting
             FROM runs r
             WHERE r.state = 'running' AND r.route = 'batch'
               AND EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = r.id AND t.state = 'ready' AND NOT t.live_reask)
             ORDER BY r.priority DESC, r.created_at",
        )
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Running runs routed to a Batch API that have a deadline, with the work they have left:
    /// tasks not yet in a batch (ready or waiting) and when each open batch was submitted
    /// (None: not yet).
    pub async fn deadlines(self) -> Result<Vec<DeadlineRun>, StoreError> {
        self.runs_left(None).await
    }

    /// The batch work `run_id` has left, when it is running and routed to batches (`run
    /// status`'s projected finish).
    pub async fn work(self, run_id: Uuid) -> Result<Option<DeadlineRun>, StoreError> {
        Ok(self.runs_left(Some(run_id)).await?.pop())
    }

    /// Running batch runs with their work left: `run_id`, or every one with a deadline.
    async fn runs_left(self, run_id: Option<Uuid>) -> Result<Vec<DeadlineRun>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.id, r.deadline,
                    (SELECT count(*) FROM tasks t WHERE t.run_id = r.id AND t.state IN ('ready', 'waiting')
                                                        AND NOT t.live_reask) AS unsent,
                    (SELECT count(*) FROM tasks t WHERE t.run_id = r.id AND t.state = 'batched') AS batched,
                    ARRAY(SELECT b.submitted_at FROM batches b
                          WHERE b.run_id = r.id AND b.state IN ('building', 'submitting', 'submitted')
                            AND b.copy_of IS NULL) AS open_submitted
             FROM runs r WHERE r.state = 'running' AND r.route = 'batch'
               AND (r.id = $1 OR ($1 IS NULL AND r.deadline IS NOT NULL))",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Sets (or clears) the time by which a run must be finished.
    pub async fn set_run_deadline(
        self,
        run_id: Uuid,
        deadline: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET deadline = $2 WHERE id = $1")
            .bind(run_id)
            .bind(deadline)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Routes a batch run to the live endpoints from now on (its deadline cannot be met by
    /// batches): the outbox publishes its ready tasks. True when this call spilled it.
    pub async fn spill_run(self, run_id: Uuid) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE runs SET route = 'live', spilled_at = now() WHERE id = $1 AND route = 'batch'")
            .bind(run_id)
            .execute(self.store.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The mean turnaround (submitted to ended) of the endpoint's last 20 ended batches; None
    /// before any ended.
    pub async fn observed_turnaround(self, endpoint: &str) -> Result<Option<f64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT avg(extract(epoch FROM ended_at - submitted_at))::float8 FROM (
                 SELECT ended_at, submitted_at FROM batches
                 WHERE endpoint = $1 AND state = 'ended' AND submitted_at IS NOT NULL AND cancel_requested_at IS NULL
                 ORDER BY ended_at DESC LIMIT 20
             ) recent",
        )
        .bind(endpoint)
        .fetch_one(self.store.pool())
        .await?)
    }

    /// How many batches `endpoint` has submitted for `run_id` so far (the next one's size
    /// doubles with each).
    pub async fn of_run(self, run_id: Uuid, endpoint: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM batches WHERE run_id = $1 AND endpoint = $2 AND copy_of IS NULL")
            .bind(run_id)
            .bind(endpoint)
            .fetch_one(self.store.pool())
            .await?)
    }

    /// Claims up to `max` ready tasks of `run_id` (in id order) into a new `building` batch of
    /// `endpoint`, in one transaction: the row, its lines and the tasks' move to `batched`. A
    /// task whose last line was rejected brings its re-ask count and conversation along (when
    /// its inputs did not change since). None when no task was ready.
    pub async fn claim(
        self,
        owner: Uuid,
        run_id: Uuid,
        endpoint: &str,
        protocol: Protocol,
        max: i64,
    ) -> Result<Option<(Uuid, Vec<ClaimedLine>)>, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.store.pool().begin().await?;
        sqlx::query(
            "INSERT INTO batches (id, run_id, endpoint, protocol, lines, owner) VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(id)
        .bind(run_id)
        .bind(endpoint)
        .bind(protocol.as_str())
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        let claimed = sqlx::query_as::<_, (Uuid, i32)>(
            "WITH picked AS (
                 SELECT id FROM tasks WHERE run_id = $1 AND state = 'ready' AND NOT live_reask
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
             )
             UPDATE tasks t SET state = 'batched', batch_id = $3 FROM picked WHERE t.id = picked.id
             RETURNING t.id, t.inputs_version",
        )
        .bind(run_id)
        .bind(max)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut tasks = claimed;
        tasks.sort_unstable();
        let lines = write_lines(&mut tx, id, &tasks).await?;
        sqlx::query("UPDATE batches SET lines = $2 WHERE id = $1")
            .bind(id)
            .bind(i32::try_from(lines.len()).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((id, lines)))
    }

    /// The claimed lines of a batch (to render them again after a restart).
    pub async fn claimed_lines(self, batch_id: Uuid) -> Result<Vec<ClaimedLine>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT line, task_id, inputs_version, reasks, conversation FROM batch_lines
             WHERE batch_id = $1 AND outcome IS NULL ORDER BY line",
        )
        .bind(batch_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Records what rendering made of the lines, and moves the batch to `submitting` with its
    /// reserved spend: from here on, the provider may have it.
    pub async fn mark_submitting(
        self,
        owner: Uuid,
        batch_id: Uuid,
        rendered: &[RenderedLine],
        reserved_usd: f64,
    ) -> Result<(), StoreError> {
        let mut tx = self.store.pool().begin().await?;
        lock_owned(&mut tx, batch_id, owner, "mark_submitting").await?;
        sqlx::query(
            "UPDATE batch_lines l SET output_key = u.key, template = u.template, template_version = u.version,
                                      history_truncated = u.trunc, prompt_tokens = u.tokens
             FROM UNNEST($2::int[], $3::bytea[], $4::text[], $5::text[], $6::int[], $7::int[])
                  AS u(line, key, template, version, trunc, tokens)
             WHERE l.batch_id = $1 AND l.line = u.line",
        )
        .bind(batch_id)
        .bind(rendered.iter().map(|r| r.line).collect::<Vec<_>>())
        .bind(rendered.iter().map(|r| r.output_key.as_bytes().to_vec()).collect::<Vec<_>>())
        .bind(rendered.iter().map(|r| r.template.clone()).collect::<Vec<_>>())
        .bind(rendered.iter().map(|r| r.template_version.clone()).collect::<Vec<_>>())
        .bind(rendered.iter().map(|r| r.history_truncated).collect::<Vec<_>>())
        .bind(rendered.iter().map(|r| r.prompt_tokens).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE batches SET state = 'submitting', submit_started_at = COALESCE(submit_started_at, now()),
                                reserved_usd = $2, lines = $3
             WHERE id = $1 AND state IN ('building', 'submitting')",
        )
        .bind(batch_id)
        .bind(reserved_usd)
        .bind(i32::try_from(rendered.len()).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A create call for the batch begins now (`true`), or ended with an answer from the
    /// provider, so nothing of it is still in flight (`false`).
    pub async fn mark_create_attempt(self, owner: Uuid, batch_id: Uuid, begins: bool) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE batches SET create_attempted_at = CASE WHEN $3 THEN now() END
             WHERE id = $1 AND owner = $2 AND state = 'submitting'",
        )
        .bind(batch_id)
        .bind(owner)
        .bind(begins)
        .execute(self.store.pool())
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Taken(batch_id, "create attempt"));
        }
        Ok(())
    }

    /// This submitter works the open row from now on (the one before it died or lost its lock).
    pub async fn take_over(self, owner: Uuid, batch_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE batches SET owner = $2 WHERE id = $1 AND owner <> $2")
            .bind(batch_id)
            .bind(owner)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// The provider has the batch: its id (and input file) recorded.
    pub async fn mark_submitted(
        self,
        owner: Uuid,
        batch_id: Uuid,
        provider_id: &str,
        input_file_id: Option<&str>,
        status: &str,
    ) -> Result<(), StoreError> {
        self.adopt(owner, batch_id, Found { provider_id, input_file_id, status }, &[]).await.map(|_| ())
    }

    /// A row left `submitting` whose batch was found at the provider: `adopted` (the oldest
    /// found) becomes its provider batch, and each of `copies` (later ones naming the row too) a
    /// `submitted` row of its own, `copy_of` it, with its lines sent copied (reserving nothing
    /// against the budget: it is cancelled at once; what it finished is priced when read), to be cancelled and its
    /// results recorded (sql/0017). One transaction, so a crash leaves either the row still
    /// `submitting` (it is reconciled again) or every copy recorded.
    pub async fn adopt(
        self,
        owner: Uuid,
        batch_id: Uuid,
        adopted: Found<'_>,
        copies: &[Found<'_>],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        let r = sqlx::query(
            "UPDATE batches SET state = 'submitted', provider_id = $2, input_file_id = $3, provider_status = $4,
                                submitted_at = now(), create_attempted_at = NULL
             WHERE id = $1 AND state = 'submitting' AND owner = $5",
        )
        .bind(batch_id)
        .bind(adopted.provider_id)
        .bind(adopted.input_file_id)
        .bind(adopted.status)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Taken(batch_id, "submitted"));
        }
        let mut ids = Vec::with_capacity(copies.len());
        for copy in copies {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO batches (id, run_id, endpoint, protocol, state, lines, owner, provider_id, input_file_id,
                                      provider_status, reserved_usd, submit_started_at, submitted_at, copy_of)
                 SELECT $2, run_id, endpoint, protocol, 'submitted', lines, owner, $3, $4, $5, 0,
                        submit_started_at, now(), id
                 FROM batches WHERE id = $1",
            )
            .bind(batch_id)
            .bind(id)
            .bind(copy.provider_id)
            .bind(copy.input_file_id)
            .bind(copy.status)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO batch_lines (batch_id, line, task_id, inputs_version, reasks, conversation, output_key,
                                          template, template_version, history_truncated, prompt_tokens)
                 SELECT $2, line, task_id, inputs_version, reasks, conversation, output_key, template, template_version,
                        history_truncated, prompt_tokens
                 FROM batch_lines WHERE batch_id = $1 AND outcome IS NULL",
            )
            .bind(batch_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// The open batches of `endpoint`, oldest first.
    pub async fn open(self, endpoint: &str) -> Result<Vec<BatchRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT b.id, b.run_id, r.state AS run_state, b.state, b.lines, b.provider_id, b.submit_started_at,
                    b.submitted_at, b.create_attempted_at, b.cancel_requested_at IS NOT NULL AS cancel_requested,
                    CASE WHEN r.route = 'live' THEN r.deadline END AS spilled_deadline, b.copy_of
             FROM batches b JOIN runs r ON r.id = b.run_id
             WHERE b.endpoint = $1 AND b.state IN ('building', 'submitting', 'submitted')
             ORDER BY b.created_at, b.id",
        )
        .bind(endpoint)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// The provider ids our rows hold, of every endpoint (several endpoints may share one
    /// provider account): an Anthropic batch not among them may be the one a lost create answer
    /// made.
    pub async fn known_provider_ids(self) -> Result<HashSet<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT provider_id FROM batches WHERE provider_id IS NOT NULL")
            .fetch_all(self.store.pool())
            .await?;
        Ok(ids.into_iter().collect())
    }

    /// A cancel was sent to the provider for this batch (its run was cancelled or spilled).
    pub async fn mark_cancel_requested(self, batch_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE batches SET cancel_requested_at = COALESCE(cancel_requested_at, now()) WHERE id = $1")
            .bind(batch_id)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Every line of a batch with what its results need, in line order.
    pub async fn lines(self, batch_id: Uuid) -> Result<Vec<LineRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT l.line, l.task_id, t.run_id, t.stage, t.label, l.inputs_version, l.reasks, l.conversation,
                    l.output_key, l.template, l.template_version, l.history_truncated, l.prompt_tokens, l.outcome,
                    (t.state = 'batched' AND t.batch_id IS NOT DISTINCT FROM $1) AS held_here,
                    (SELECT count(*) FROM batch_lines e WHERE e.task_id = l.task_id AND e.outcome = 'errored')::int4
                        AS errors_before
             FROM batch_lines l JOIN tasks t ON t.id = l.task_id
             WHERE l.batch_id = $1 ORDER BY l.line",
        )
        .bind(batch_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Writes each line's outcome (and, for a rejected answer, the conversation its next line
    /// carries), and puts the tasks of `back` that are still `batched` in this batch back to
    /// `ready` (those of `live` marked for a live re-ask), in one transaction.
    pub async fn settle_lines(
        self,
        owner: Uuid,
        batch_id: Uuid,
        outcomes: &[LineOutcome],
        back: &[Uuid],
        live: &[Uuid],
    ) -> Result<u64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        lock_owned(&mut tx, batch_id, owner, "settle_lines").await?;
        let lines: Vec<i32> = outcomes.iter().map(|o| o.0).collect();
        let words: Vec<&str> = outcomes.iter().map(|o| o.1).collect();
        let convs: Vec<Option<serde_json::Value>> =
            outcomes.iter().map(|o| o.2.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default())).collect();
        sqlx::query(
            "UPDATE batch_lines l SET outcome = u.outcome, conversation = COALESCE(u.conv, l.conversation)
             FROM UNNEST($2::int[], $3::text[], $4::jsonb[]) AS u(line, outcome, conv)
             WHERE l.batch_id = $1 AND l.line = u.line",
        )
        .bind(batch_id)
        .bind(&lines)
        .bind(&words)
        .bind(&convs)
        .execute(&mut *tx)
        .await?;
        let n = if back.is_empty() { 0 } else { unbatch(&mut tx, batch_id, back, live).await? };
        tx.commit().await?;
        Ok(n)
    }

    /// The conversation a live re-ask of `task_id` carries on: its latest line's, when that line
    /// was rejected for a live re-ask and rendered from inputs `inputs_version`; None starts the
    /// task afresh.
    pub async fn live_reask_conversation(
        self,
        task_id: Uuid,
        inputs_version: i32,
    ) -> Result<Option<CarriedReask>, StoreError> {
        let mut carried = carried_reasks(self.store.pool(), &[task_id], REJECTED_LIVE).await?;
        Ok(carried.remove(&task_id).filter(|c| c.inputs_version == inputs_version))
    }

    /// Ends a batch: `ended` with its cost, or `failed` with the provider's reason; every task
    /// still `batched` in it goes back to `ready` (a line no result named).
    pub async fn end(
        self,
        owner: Uuid,
        batch_id: Uuid,
        state: BatchState,
        provider_status: &str,
        error: Option<&str>,
        cost_usd: f64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        lock_owned(&mut tx, batch_id, owner, "end_batch").await?;
        sqlx::query(
            "UPDATE batches SET state = $2, provider_status = $3, error = $4, cost_usd = $5, ended_at = now()
             WHERE id = $1",
        )
        .bind(batch_id)
        .bind(state.as_str())
        .bind(provider_status)
        .bind(error)
        .bind(cost_usd)
        .execute(&mut *tx)
        .await?;
        let n = unbatch(&mut tx, batch_id, &[], &[]).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// A `building` batch left by a submitter that died before sending anything: its tasks go
    /// back to `ready` and the row goes.
    pub async fn abandon(self, owner: Uuid, batch_id: Uuid) -> Result<u64, StoreError> {
        let mut tx = self.store.pool().begin().await?;
        lock_owned(&mut tx, batch_id, owner, "abandon_batch").await?;
        let n = unbatch(&mut tx, batch_id, &[], &[]).await?;
        sqlx::query("DELETE FROM batches WHERE id = $1 AND state = 'building'")
            .bind(batch_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Batches of a run by state: how many, their lines, the lines done by their answers, and
    /// spend (reserved while open, paid once ended) (`run status`).
    pub async fn summary(self, run_id: Uuid) -> Result<Vec<BatchCount>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT b.state, count(*) AS batches, COALESCE(sum(b.lines), 0)::int8 AS lines,
                    COALESCE(sum((SELECT count(*) FROM batch_lines l WHERE l.batch_id = b.id AND l.outcome = 'done'
                                   AND b.copy_of IS NULL)), 0)::int8 AS done_lines,
                    COALESCE(sum(COALESCE(b.cost_usd, b.reserved_usd)), 0)::float8 AS usd
             FROM batches b WHERE b.run_id = $1 GROUP BY b.state ORDER BY b.state",
        )
        .bind(run_id)
        .fetch_all(self.store.pool())
        .await?)
    }
}

/// Locks the batch row for the transaction, unless another submitter owns it now.
async fn lock_owned(tx: &mut Tx<'_>, batch_id: Uuid, owner: Uuid, what: &'static str) -> Result<(), StoreError> {
    let mine: Option<Uuid> = sqlx::query_scalar("SELECT id FROM batches WHERE id = $1 AND owner = $2 FOR UPDATE")
        .bind(batch_id)
        .bind(owner)
        .fetch_optional(&mut **tx)
        .await?;
    mine.map(|_| ()).ok_or(StoreError::Taken(batch_id, what))
}

/// Tasks of `batch_id` still `batched` go back to `ready`: those of `only` (sorted), or all when
/// `only` is empty; those of `live` marked for a live re-ask. Locked in id order, as the
/// finishing transaction locks them.
async fn unbatch(tx: &mut Tx<'_>, batch_id: Uuid, only: &[Uuid], live: &[Uuid]) -> Result<u64, StoreError> {
    let res = sqlx::query(
        "WITH locked AS (
             SELECT id FROM tasks WHERE batch_id = $1 AND state = 'batched'
               AND (cardinality($2::uuid[]) = 0 OR id = ANY($2))
             ORDER BY id FOR UPDATE
         )
         UPDATE tasks SET state = 'ready', live_reask = tasks.live_reask OR tasks.id = ANY($3)
         FROM locked WHERE tasks.id = locked.id",
    )
    .bind(batch_id)
    .bind(only)
    .bind(live)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected())
}

/// The lines of a new batch `batch_id`, one per claimed (task, inputs version) in task order:
/// a task whose latest line was rejected carries its conversation on (a task that failed and
/// was put back by `run retry-failed` starts afresh).
async fn write_lines(tx: &mut Tx<'_>, batch_id: Uuid, tasks: &[(Uuid, i32)]) -> Result<Vec<ClaimedLine>, StoreError> {
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.0).collect();
    let mut carried = carried_reasks(&mut **tx, &ids, REJECTED).await?;
    let lines: Vec<ClaimedLine> = tasks
        .iter()
        .enumerate()
        .map(|(i, (task_id, inputs_version))| {
            let (reasks, conversation) = match carried.remove(task_id) {
                Some(c) if c.inputs_version == *inputs_version => (c.reasks, c.conversation),
                _ => (0, Vec::new()),
            };
            ClaimedLine {
                line: i32::try_from(i).unwrap_or(i32::MAX),
                task_id: *task_id,
                inputs_version: *inputs_version,
                reasks,
                conversation,
            }
        })
        .collect();
    let col = |f: fn(&ClaimedLine) -> i32| lines.iter().map(f).collect::<Vec<i32>>();
    let convs: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::to_value(&l.conversation).unwrap_or_default()).collect();
    sqlx::query(
        "INSERT INTO batch_lines (batch_id, line, task_id, inputs_version, reasks, conversation)
         SELECT $1, * FROM UNNEST($2::int[], $3::uuid[], $4::int[], $5::int[], $6::jsonb[])",
    )
    .bind(batch_id)
    .bind(col(|l| l.line))
    .bind(&ids)
    .bind(col(|l| l.inputs_version))
    .bind(col(|l| l.reasks))
    .bind(&convs)
    .execute(&mut **tx)
    .await?;
    Ok(lines)
}
