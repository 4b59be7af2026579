//! The batch submitter: works the runs routed to a provider's Batch API (`runs.route =
//! 'batch'`), one loop per `mode = "batch"` endpoint, one process per endpoint at a time (the
//! endpoint's advisory lock, `Locks::endpoint_lock`).
//!
//! Each tick, for its endpoint:
//! 1. Open batch rows, oldest first. `building`: left by a submitter that died before sending
//!    anything: its tasks go back to `ready`. `submitting`: the create call may or may not have
//!    reached the provider: the provider's list is searched for it ([`BatchClient::find`]); found,
//!    it is adopted (a second copy is recorded as a row of its own, `copy_of` it, cancelled, and
//!    what it finished is read and paid for); not found, it is created again. `submitted`:
//!    polled; a cancelled run's batch is cancelled at the provider; an ended one has its
//!    results finished; a failed one (refused as a whole) puts its tasks back.
//! 2. New batches, while fewer than `batch.max_open` are open: ready tasks of each batch run are
//!    claimed into a row (`Batches::claim`) before anything is sent, rendered as a live
//!    worker renders them (an answer the ledger holds completes the task at once), recorded
//!    `submitting`, then created at the provider. The first batch of a run is small
//!    (`batch.first_lines`) and each next one doubles while tasks of the run still wait for
//!    inputs, so item profiles come back early and the stages downstream follow.
//!
//! Results go through the same validation and finishing as live answers
//! (`core::validate`, `Finishing::finish_tasks`): an accepted answer completes its task; a rejected
//! one is re-asked with the validator's reason (up to `stages.max_reasks`): in the task's next
//! batch, or by the live workers when the endpoint says `reask = "live"` (the task goes back
//! `ready` marked `live_reask`, the outbox publishes it, and the live worker carries the
//! conversation on: `Batches::live_reask_conversation`). An errored, expired or cancelled line
//! puts its task back to `ready` (the next batch sends it again); an invalid request fails the
//! task. Every line is an attempt row with its cost, its id derived from the batch and line so a
//! second reading records nothing twice.

use crate::error::WorkerError;
use crate::process::{accepted_output, reask_feedback, rejected_error, render_failure};
use crate::render::{PromptCap, render_capped};
use reasonrec_core::attempt::{AttemptRecord, ErrorClass};
use reasonrec_core::batching::{batch_work_ends, lines_per_round};
use reasonrec_core::settings::{BatchSettings, EndpointMode, Reask, Settings};
use reasonrec_core::stage::RunState;
use reasonrec_core::validate::validate_answer;
use reasonrec_core::{OutputKey, PromptLibrary, RenderedPrompt};
use reasonrec_store::Store;
use reasonrec_store::batches::{
    BatchRow, BatchState, ClaimedLine, Found, LineOutcome, LineRow, REJECTED, REJECTED_LIVE, RenderedLine,
};
use reasonrec_store::finish::{Finish, FinishKind};
use reasonrec_store::lifecycle::Gate;
use reasonrec_teacher::batch::{BatchFile, BatchPhase, LineResult, ProviderBatch, ResultLine};
use reasonrec_teacher::protocol::estimate_prompt_tokens;
use reasonrec_teacher::{BatchClient, TeacherError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Provider clocks and ours differ: a lost batch is looked for from this long before we
/// recorded that we were about to create it.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

/// What one tick did (tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub created: u32,
    /// Lost create answers found at the provider and adopted.
    pub adopted: u32,
    /// Second copies found at the provider and cancelled.
    pub duplicates_cancelled: u32,
    pub ended: u32,
    pub failed: u32,
    pub abandoned: u32,
    /// Tasks done by an accepted answer now; lines re-asked, sent back (errored, expired,
    /// cancelled) or failing their task.
    pub done: u32,
    pub reasked: u32,
    pub sent_back: u32,
    pub task_failures: u32,
    /// Tasks completed from the ledger while building (no line sent).
    pub reused: u32,
    /// Runs spilled to live endpoints (their deadline could not be met by batches).
    pub spilled: u32,
}

impl TickReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, o: &TickReport) {
        self.created += o.created;
        self.adopted += o.adopted;
        self.duplicates_cancelled += o.duplicates_cancelled;
        self.ended += o.ended;
        self.failed += o.failed;
        self.abandoned += o.abandoned;
        self.done += o.done;
        self.reasked += o.reasked;
        self.sent_back += o.sent_back;
        self.task_failures += o.task_failures;
        self.reused += o.reused;
        self.spilled += o.spilled;
    }
}

/// One batch endpoint's submitter.
#[derive(Clone)]
pub struct BatchSubmitter {
    store: Store,
    prompts: Arc<PromptLibrary>,
    client: BatchClient,
    batch: BatchSettings,
    max_reasks: u32,
    /// `teacher.max_attempts`: errored lines of a task before it fails.
    max_attempts: u32,
    cap: PromptCap,
    /// This submitter's mark on the rows it works (`batches.owner`).
    owner: Uuid,
    /// Tasks per second the live endpoints take after a spill (`BatchSettings::live_rate`).
    live_rate: Option<f64>,
    /// New batches held back after the provider refused one ([`Hold`]).
    hold: Arc<std::sync::Mutex<Hold>>,
}

/// After the provider refuses a batch as a whole (OpenAI fails one past the model's enqueued-token
/// quota, "try again once some in_progress batches have been completed"; a 429 or a refusal of
/// the create call), the endpoint sends nothing new until one of its batches ends, or, with none
/// open, for a backoff that doubles with each refusal in a row (from `batch.poll_ms`, at most
/// [`Hold::MAX`]); without it a refusal would come back at every poll, each a failed batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    until: Option<std::time::Instant>,
    refusals: u32,
}

impl Hold {
    pub const MAX: Duration = Duration::from_secs(1_800);

    /// One more refusal at `now`: held for `poll` x 2^refusals (capped).
    pub fn refuse(&mut self, now: std::time::Instant, poll: Duration) -> Duration {
        self.refusals = self.refusals.saturating_add(1);
        let wait = poll.saturating_mul(1u32 << self.refusals.min(16)).min(Self::MAX);
        self.until = Some(now + wait);
        wait
    }

    /// A batch of the endpoint ended: the provider has room again.
    pub fn release(&mut self) {
        *self = Hold::default();
    }

    pub fn holds(&self, now: std::time::Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }
}

/// What building a batch made of one claimed line.
enum Built {
    /// A request to send (`run_id`: its task's run).
    Line { rendered: RenderedLine, bytes: Vec<u8>, run_id: Uuid },
    /// The ledger holds an answer to this prompt already: the task completes, no line is sent.
    Reused(Finish),
    /// The prompt cannot be rendered: the task fails.
    Failed(Finish),
}

/// Claimed lines rendered (and their tasks loaded) at a time while a batch is built.
const BUILD_CHUNK: usize = 1_000;
/// Results read before they are finished together (one `finish_tasks`, one `settle_lines`).
const RESULT_CHUNK: usize = 2_000;

impl BatchSubmitter {
    /// One submitter per `mode = "batch"` endpoint of `settings` (none without such endpoints).
    pub fn from_settings(
        store: &Store,
        prompts: Arc<PromptLibrary>,
        settings: &Settings,
    ) -> Result<Vec<Self>, TeacherError> {
        settings
            .teacher
            .endpoints
            .iter()
            .filter(|e| e.mode == EndpointMode::Batch)
            .map(|e| {
                Ok(Self {
                    store: store.clone(),
                    prompts: prompts.clone(),
                    client: BatchClient::new(e)?,
                    batch: settings.batch.clone(),
                    max_reasks: settings.stages.max_reasks,
                    max_attempts: settings.teacher.max_attempts,
                    cap: PromptCap::from_settings(settings),
                    owner: Uuid::now_v7(),
                    live_rate: settings.batch.live_rate(&settings.teacher),
                    hold: Arc::default(),
                })
            })
            .collect()
    }

    pub fn endpoint(&self) -> &str {
        &self.client.endpoint().name
    }

    fn hold<T>(&self, f: impl FnOnce(&mut Hold) -> T) -> T {
        // The hold is a plain value: one left by a panicking holder is still good.
        f(&mut self.hold.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The provider refused a batch: new ones wait ([`Hold`]).
    fn refused(&self, batch: Uuid, why: &str) {
        let wait = self.hold(|h| h.refuse(std::time::Instant::now(), Duration::from_millis(self.batch.poll_ms)));
        tracing::warn!(endpoint = %self.endpoint(), %batch, error = %why, wait_secs = wait.as_secs_f64(),
                       "the provider refused a batch; no new batch until one ends or the wait is over");
    }

    /// Ticks every `batch.poll_ms` while this process holds the endpoint's lock (waiting for it
    /// otherwise), until `stop`. Errors of a tick are logged and the next tick tries again.
    pub async fn run(self, stop: CancellationToken) {
        let poll = Duration::from_millis(self.batch.poll_ms);
        let mut lock = None;
        loop {
            if lock.is_none() {
                lock = match self.store.locks().endpoint_lock(self.endpoint()).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(endpoint = %self.endpoint(), error = %e, "cannot take the batch endpoint's lock");
                        None
                    }
                };
            }
            if let Some(l) = lock.as_mut() {
                if l.alive().await {
                    match self.tick().await {
                        Ok(r) if r != TickReport::default() => {
                            tracing::info!(endpoint = %self.endpoint(), report = ?r, "batch tick")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(endpoint = %self.endpoint(), error = %e, "batch tick failed; trying again")
                        }
                    }
                } else {
                    tracing::warn!(endpoint = %self.endpoint(), "lost the batch endpoint's lock; taking it again");
                    lock = None;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        if let Some(l) = lock {
            l.release().await;
        }
    }

    /// One pass over the endpoint's batches, then new batches while there is room. The caller
    /// must hold the endpoint's lock ([`Self::run`] does); every row it works is taken over
    /// first, so a submitter that lost the lock meanwhile stops at its next move
    /// (`StoreError::Taken`).
    pub async fn tick(&self) -> Result<TickReport, WorkerError> {
        let mut report = TickReport::default();
        let turnaround = self.turnaround().await?;
        let open = self.store.batches().open(self.endpoint()).await?;
        let mut still_open = 0u32;
        // A row whose create may have reached the provider blocks new creates until it is
        // resolved: the Anthropic search (no metadata) must have one candidate at a time.
        let mut unresolved = false;
        for b in &open {
            self.store.batches().take_over(self.owner, b.id).await?;
            match b.state {
                BatchState::Building => {
                    self.store.batches().abandon(self.owner, b.id).await?;
                    report.abandoned += 1;
                }
                BatchState::Submitting => {
                    if !self.reconcile(b, &mut report).await? {
                        unresolved = true;
                    }
                    still_open += 1;
                }
                BatchState::Submitted => {
                    if !self.poll(b, turnaround, &mut report).await? {
                        still_open += 1;
                    }
                }
                BatchState::Ended | BatchState::Failed => {}
            }
        }
        self.spill_late_runs(turnaround, &mut report).await?;
        if unresolved || self.hold(|h| h.holds(std::time::Instant::now())) {
            return Ok(report);
        }
        'runs: for run in self.store.batches().runs().await? {
            if !matches!(self.store.lifecycle().publish_gate(run.id).await?, Gate::Open) {
                // Paused, or its budget (with what open batches reserve) is reached.
                continue;
            }
            loop {
                if still_open >= self.batch.max_open {
                    break 'runs;
                }
                let size = self.next_size(run.id, run.waiting).await?;
                let protocol = self.client.endpoint().protocol;
                let Some((id, lines)) =
                    self.store.batches().claim(self.owner, run.id, self.endpoint(), protocol, size).await?
                else {
                    break;
                };
                still_open += 1;
                if !self.build_and_create(id, lines, &mut report).await? {
                    // Left `submitting`: resolved by the next tick before anything else is sent.
                    break 'runs;
                }
            }
        }
        Ok(report)
    }

    /// Spills to live endpoints each batch run whose remaining batch work cannot end by its
    /// deadline at the observed turnaround ([`batch_work_ends`]), less the time the live
    /// endpoints would need for all that is left. Its open batches that would end too late are
    /// cancelled when polled; those that end in time still count.
    async fn spill_late_runs(&self, turnaround: chrono::TimeDelta, report: &mut TickReport) -> Result<(), WorkerError> {
        let now = chrono::Utc::now();
        let per_round = lines_per_round(&self.batch, self.client.endpoint().protocol);
        for run in self.store.batches().deadlines().await? {
            let Some(deadline) = run.deadline else { continue };
            let ends = batch_work_ends(now, turnaround, &run.open_submitted, run.unsent.max(0) as u64, per_round);
            // Time kept for the live endpoints to do all that is left, should batches fail us.
            let margin = self.live_time(run.unsent + run.batched);
            if ends >= deadline - margin && self.store.batches().spill_run(run.id).await? {
                tracing::warn!(endpoint = %self.endpoint(), run_id = %run.id, turnaround_secs = turnaround.num_seconds(),
                               projected_end = %ends, deadline = %deadline,
                               "the deadline cannot be met by batches; the run's remaining tasks go to live endpoints");
                report.spilled += 1;
            }
        }
        Ok(())
    }

    /// How long the live endpoints take for `tasks` tasks (zero when their rate is not known).
    fn live_time(&self, tasks: i64) -> chrono::TimeDelta {
        match self.live_rate {
            Some(rate) if rate > 0.0 => chrono::TimeDelta::milliseconds((tasks.max(0) as f64 / rate * 1000.0) as i64),
            _ => chrono::TimeDelta::zero(),
        }
    }

    /// The batch turnaround to plan with: the mean of the endpoint's last ended batches, or
    /// `batch.turnaround_secs` before any ended.
    async fn turnaround(&self) -> Result<chrono::TimeDelta, WorkerError> {
        let secs = match self.store.batches().observed_turnaround(self.endpoint()).await? {
            Some(s) if s.is_finite() && s >= 0.0 => s,
            _ => self.batch.turnaround_secs as f64,
        };
        Ok(chrono::TimeDelta::milliseconds((secs * 1000.0) as i64))
    }

    /// Lines of the run's next batch: small and doubling while tasks of the run wait for
    /// inputs, the most the provider takes when nothing downstream waits.
    async fn next_size(&self, run_id: Uuid, waiting: bool) -> Result<i64, WorkerError> {
        let max = i64::from(self.batch.max_lines.min(self.client.max_lines()));
        if !waiting {
            return Ok(max);
        }
        let sent = self.store.batches().of_run(run_id, self.endpoint()).await?;
        let grown = i64::from(self.batch.first_lines).saturating_mul(1i64 << sent.clamp(0, 30));
        Ok(grown.min(max).max(1))
    }

    /// Renders the claimed lines, completes those the ledger answers already, records the batch
    /// `submitting` with what is sent, and creates it at the provider. False when the create
    /// failed and the row is left `submitting` (resolved by the next tick).
    async fn build_and_create(
        &self,
        id: Uuid,
        claimed: Vec<ClaimedLine>,
        report: &mut TickReport,
    ) -> Result<bool, WorkerError> {
        let (lines, file) = self.build(id, claimed, report).await?;
        if lines.is_empty() {
            self.store.batches().end(self.owner, id, BatchState::Ended, "empty", None, 0.0).await?;
            return Ok(true);
        }
        let ep = self.client.endpoint();
        // Reserved: the prompts at the batch price and, for the answers, `max_tokens` each.
        let reserved: f64 = lines
            .iter()
            .map(|l| {
                ep.cost_usd(&reasonrec_core::settings::TokenUsage {
                    input: u32::try_from(l.prompt_tokens).unwrap_or(0),
                    output: ep.params.max_tokens,
                    ..Default::default()
                })
            })
            .sum();
        self.store.batches().mark_submitting(self.owner, id, &lines, reserved).await?;
        self.create(id, file, report).await
    }

    /// Renders each line as a live worker would, [`BUILD_CHUNK`] lines at a time, into the
    /// batch's spool file (never the whole batch in memory); returns what was written, in line
    /// order. Lines past the size limit (`batch.max_bytes`, the provider's) wait for a later
    /// batch, unrendered.
    async fn build(
        &self,
        id: Uuid,
        claimed: Vec<ClaimedLine>,
        report: &mut TickReport,
    ) -> Result<(Vec<RenderedLine>, BatchFile), WorkerError> {
        let mut file = self.client.spool(self.batch.max_bytes).await.map_err(WorkerError::Spool)?;
        let mut lines = Vec::new();
        let mut settled: Vec<LineOutcome> = Vec::new();
        let mut back: Vec<Uuid> = Vec::new();
        let mut full = false;
        for chunk in claimed.chunks(BUILD_CHUNK) {
            if full {
                settled.extend(chunk.iter().map(|c| (c.line, "deferred", None)));
                back.extend(chunk.iter().map(|c| c.task_id));
                continue;
            }
            let mut finishes = Vec::new();
            for (claimed, built) in self.render_chunk(id, chunk).await? {
                match built {
                    Built::Line { rendered, bytes, .. } => {
                        if !full && file.push(&bytes).await.map_err(WorkerError::Spool)? {
                            lines.push(rendered);
                        } else {
                            full = true;
                            settled.push((claimed.line, "deferred", None));
                            back.push(claimed.task_id);
                        }
                    }
                    Built::Reused(f) => {
                        finishes.push(f);
                        settled.push((claimed.line, "reused", None));
                        report.reused += 1;
                    }
                    Built::Failed(f) => {
                        finishes.push(f);
                        settled.push((claimed.line, "failed", None));
                        report.task_failures += 1;
                    }
                }
            }
            if !finishes.is_empty() {
                let outcomes = self.store.finishing().finish_tasks(&finishes).await?;
                // A reuse rendered from inputs that changed meanwhile renders again in a later batch.
                back.extend(finishes.iter().zip(&outcomes).filter(|(_, c)| c.superseded).map(|(f, _)| f.task_id));
            }
        }
        if !settled.is_empty() {
            back.sort_unstable();
            self.store.batches().settle_lines(self.owner, id, &settled, &back, &[]).await?;
        }
        Ok((lines, file))
    }

    /// Renders some claimed lines of batch `id`: each a request to send, a task the ledger
    /// answers already (no line), or a task whose prompt cannot be rendered.
    async fn render_chunk<'c>(
        &self,
        id: Uuid,
        chunk: &'c [ClaimedLine],
    ) -> Result<Vec<(&'c ClaimedLine, Built)>, WorkerError> {
        let ids: Vec<Uuid> = chunk.iter().map(|l| l.task_id).collect();
        let bundles = self.store.tasks().load_bundles(&ids).await?;
        let ep = self.client.endpoint();
        let mut built = Vec::with_capacity(chunk.len());
        for line in chunk {
            let Some(bundle) = bundles.get(&line.task_id) else { continue };
            let task = &bundle.task;
            let rendered = match render_capped(&self.store, &self.prompts, bundle, self.cap).await {
                Ok(r) => r,
                Err(e) => {
                    let kind = FinishKind::Unrenderable { error: render_failure(e)? };
                    let inputs_version = task.inputs_version;
                    let f = Finish { task_id: task.id, run_id: task.run_id, inputs_version, kind, attempts: vec![] };
                    built.push((line, Built::Failed(f)));
                    continue;
                }
            };
            let salt = OutputKey::salt_of(&task.input).map(str::to_owned);
            let key = OutputKey::for_endpoint(task.stage, &rendered.prompt, ep, salt.as_deref());
            let RenderedPrompt { template, version, mut messages } = rendered.prompt;
            for (answer, feedback) in &line.conversation {
                self.cap.reask(&mut messages, answer.clone(), feedback.clone());
            }
            let rendered_line = RenderedLine {
                line: line.line,
                output_key: key,
                template,
                template_version: version,
                history_truncated: rendered.truncated,
                prompt_tokens: i32::try_from(estimate_prompt_tokens(&messages)).unwrap_or(i32::MAX),
            };
            let bytes = self.client.encode_line(&custom_id(id, line.line), &messages);
            built.push((line, Built::Line { rendered: rendered_line, bytes, run_id: task.run_id }));
        }
        // Answers the ledger holds already complete their tasks without a line.
        let keys: Vec<OutputKey> = built
            .iter()
            .filter_map(|(_, b)| match b {
                Built::Line { rendered, .. } => Some(rendered.output_key),
                _ => None,
            })
            .collect();
        let existing = self.store.tasks().existing_outputs(&keys).await?;
        for (line, b) in &mut built {
            if let Built::Line { rendered, run_id, .. } = b
                && existing.contains(&rendered.output_key)
            {
                let kind = FinishKind::Complete {
                    key: rendered.output_key,
                    output: None,
                    history_truncated: rendered.history_truncated,
                };
                let f = Finish {
                    task_id: line.task_id,
                    run_id: *run_id,
                    inputs_version: line.inputs_version,
                    kind,
                    attempts: vec![],
                };
                *b = Built::Reused(f);
            }
        }
        Ok(built)
    }

    /// The create call, once. Its failure leaves the row `submitting`: the next tick looks for
    /// the batch at the provider before creating it again.
    async fn create(&self, id: Uuid, file: BatchFile, report: &mut TickReport) -> Result<bool, WorkerError> {
        self.store.batches().mark_create_attempt(self.owner, id, true).await?;
        let (lines, bytes) = (file.lines(), file.bytes());
        match self.client.create(&tag(id), file).await {
            Ok(pb) => {
                self.store
                    .batches()
                    .mark_submitted(self.owner, id, &pb.id, pb.input_file_id.as_deref(), &pb.status)
                    .await?;
                tracing::info!(endpoint = %self.endpoint(), batch = %id, provider_id = %pb.id, lines, bytes, "batch submitted");
                report.created += 1;
                Ok(true)
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(endpoint = %self.endpoint(), batch = %id, error = %e,
                               "batch create failed; it is looked for at the provider before it is sent again");
                if matches!(e, TeacherError::RateLimited { .. }) {
                    self.refused(id, &e.to_string());
                }
                if e.http_status().is_some() {
                    // The provider answered: nothing of this call is still on its way.
                    self.store.batches().mark_create_attempt(self.owner, id, false).await?;
                }
                Ok(false)
            }
            Err(e) => {
                // Refused outright (credentials, a bad request): nothing was created. The tasks
                // go back; new batches wait (`Hold`), so a lasting refusal is tried again at a
                // doubling interval.
                tracing::error!(endpoint = %self.endpoint(), batch = %id, error = %e, "batch create refused");
                self.refused(id, &e.to_string());
                self.store
                    .batches()
                    .end(self.owner, id, BatchState::Failed, "refused", Some(&e.to_string()), 0.0)
                    .await?;
                report.failed += 1;
                Ok(true)
            }
        }
    }

    /// A row left `submitting`: adopt the provider's batch if the create reached it, else create
    /// it again (rendered again from the claimed lines, and recorded as sent). True when the row
    /// is resolved (submitted, ended or failed).
    async fn reconcile(&self, b: &BatchRow, report: &mut TickReport) -> Result<bool, WorkerError> {
        // A create still in flight (its caller died while sending) may reach the provider after
        // a search: wait until it would have timed out.
        let in_flight =
            chrono::TimeDelta::seconds(i64::try_from(self.client.endpoint().timeout_secs).unwrap_or(i64::MAX));
        if b.create_attempted_at.is_some_and(|t| chrono::Utc::now() < t + in_flight) {
            return Ok(false);
        }
        let since = b.submit_started_at.unwrap_or_else(chrono::Utc::now) - CLOCK_SKEW;
        let known = self.store.batches().known_provider_ids().await?;
        let lines = u64::try_from(b.lines).unwrap_or(0);
        let mut found = match self.client.find(&tag(b.id), since, lines, &known).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint(), batch = %b.id, error = %e, "cannot list the provider's batches; trying again");
                return Ok(false);
            }
        };
        // Newest first: the oldest is the one our first create made.
        if let Some(first) = found.pop() {
            // Only OpenAI's match is certain (our id in its metadata): an Anthropic batch that
            // merely looks like ours may be someone else's, so it is left alone.
            let (copies, others): (Vec<_>, Vec<_>) =
                found.iter().partition(|extra| extra.tag.as_deref() == Some(tag(b.id).as_str()));
            for other in others {
                tracing::warn!(provider_id = %other.id, "another unknown batch of as many requests; left alone");
            }
            let copy_rows: Vec<Found> = copies.iter().map(|c| found_row(c)).collect();
            let copy_ids = self.store.batches().adopt(self.owner, b.id, found_row(&first), &copy_rows).await?;
            tracing::warn!(endpoint = %self.endpoint(), batch = %b.id, provider_id = %first.id,
                           "a batch whose create answer was lost was found at the provider; adopted");
            report.adopted += 1;
            for (copy, id) in copies.iter().zip(copy_ids) {
                // Recorded as a row of its own: cancelled now (or by its next poll), what it
                // finished before is read and paid for like any batch's results.
                tracing::warn!(endpoint = %self.endpoint(), batch = %b.id, provider_id = %copy.id, copy = %id,
                               "second copy at the provider; cancelling it");
                self.cancel_at_provider(id, &copy.id).await?;
                report.duplicates_cancelled += 1;
            }
            return Ok(true);
        }
        let claimed = self.store.batches().claimed_lines(b.id).await?;
        self.build_and_create(b.id, claimed, report).await
    }

    /// Polls a submitted batch; finishes it when it ended. True when the row is no longer open.
    async fn poll(
        &self,
        b: &BatchRow,
        turnaround: chrono::TimeDelta,
        report: &mut TickReport,
    ) -> Result<bool, WorkerError> {
        let Some(provider_id) = b.provider_id.as_deref() else { return Ok(false) };
        // A batch of a run spilled to live endpoints that is not expected to end by the run's
        // deadline (one that is late already is expected a whole turnaround from now) is
        // cancelled: its finished lines still count, the rest go live.
        // Of a spilled run: a batch already past its expected end (the provider is slower than
        // observed: when it ends is not known), or one that would end too late for its lines to
        // be redone live.
        let now = chrono::Utc::now();
        let overdue = b.submitted_at.is_some_and(|t| t + turnaround < now);
        let expected_end = batch_work_ends(now, turnaround, &[b.submitted_at], 0, 1);
        let late =
            b.spilled_deadline.is_some_and(|d| overdue || expected_end >= d - self.live_time(i64::from(b.lines)));
        let closed = !b.run_state.is_open() && b.run_state != RunState::Completed;
        if (closed || late || b.copy_of.is_some()) && !b.cancel_requested {
            self.cancel_at_provider(b.id, provider_id).await?;
        }
        let pb = match self.client.retrieve(provider_id).await {
            Ok(pb) => pb,
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint(), batch = %b.id, error = %e, "cannot poll the batch; trying again");
                return Ok(false);
            }
        };
        match pb.phase {
            BatchPhase::Open => Ok(false),
            BatchPhase::Failed => {
                let why = pb.errors.clone().unwrap_or_else(|| pb.status.clone());
                tracing::warn!(endpoint = %self.endpoint(), batch = %b.id, error = %why, "the provider failed the batch; its tasks go back");
                if b.copy_of.is_none() {
                    self.refused(b.id, &why);
                }
                self.store.batches().end(self.owner, b.id, BatchState::Failed, &pb.status, Some(&why), 0.0).await?;
                report.failed += 1;
                Ok(true)
            }
            BatchPhase::Ended => {
                self.hold(Hold::release);
                self.finish(b, &pb, report).await?;
                Ok(true)
            }
        }
    }

    /// Asks the provider to cancel batch row `id`'s batch and records that it was asked (also
    /// when it answers 409: the batch ended meanwhile and is read like any ended one). A cancel
    /// that fails otherwise is asked again at the row's next poll.
    async fn cancel_at_provider(&self, id: Uuid, provider_id: &str) -> Result<(), WorkerError> {
        match self.client.cancel(provider_id).await {
            Ok(_) => self.store.batches().mark_cancel_requested(id).await?,
            Err(e) if e.http_status() == Some(409) => {
                tracing::debug!(batch = %id, error = %e, "the batch ended before its cancel");
                self.store.batches().mark_cancel_requested(id).await?
            }
            Err(e) => tracing::warn!(batch = %id, error = %e, "cannot cancel the batch; trying again"),
        }
        Ok(())
    }

    /// Feeds an ended batch's results through validation and finishing, [`RESULT_CHUNK`] at a
    /// time as they are read. A reading cut short leaves the batch open: the next poll reads
    /// again from the start, and lines settled meanwhile are only counted.
    async fn finish(&self, b: &BatchRow, pb: &ProviderBatch, report: &mut TickReport) -> Result<(), WorkerError> {
        let rows = self.store.batches().lines(b.id).await?;
        // A second copy's requests are the adopted row's file: their custom ids name that row.
        let named = b.copy_of.unwrap_or(b.id);
        let by_id: HashMap<String, &LineRow> = rows.iter().map(|l| (custom_id(named, l.line), l)).collect();
        let estimate = |c: &str| by_id.get(c).map_or(0, |l| l.prompt_tokens.max(0) as u32);
        let mut results = self.client.results(pb);
        let (mut cost, mut read) = (0.0, 0usize);
        loop {
            let mut chunk = Vec::with_capacity(RESULT_CHUNK);
            let last = loop {
                match results.next(&estimate).await {
                    Ok(Some(r)) => {
                        chunk.push(r);
                        if chunk.len() == RESULT_CHUNK {
                            break false;
                        }
                    }
                    Ok(None) => break true,
                    Err(e) => {
                        tracing::warn!(endpoint = %self.endpoint(), batch = %b.id, error = %e, results = read + chunk.len(),
                                       "cannot read the batch's results; trying again");
                        return Ok(());
                    }
                }
            };
            read += chunk.len();
            cost += self.settle_results(b, pb, &by_id, &chunk, report).await?;
            if last {
                break;
            }
        }
        // Lines no result named go back with the batch's end.
        let unnamed = self.store.batches().end(self.owner, b.id, BatchState::Ended, &pb.status, None, cost).await?;
        report.sent_back += u32::try_from(unnamed).unwrap_or(u32::MAX);
        report.ended += 1;
        tracing::info!(endpoint = %self.endpoint(), batch = %b.id, results = read, cost_usd = cost, "batch finished");
        Ok(())
    }

    /// Judges and finishes some results of an ended batch; returns what they cost (lines settled
    /// by an earlier reading included: the batch's cost is that of all its results).
    async fn settle_results(
        &self,
        b: &BatchRow,
        pb: &ProviderBatch,
        by_id: &HashMap<String, &LineRow>,
        results: &[ResultLine],
        report: &mut TickReport,
    ) -> Result<f64, WorkerError> {
        let started = pb.created_at;
        let duration_ms = i32::try_from((chrono::Utc::now() - started).num_milliseconds().max(0)).unwrap_or(i32::MAX);
        let ep = self.client.endpoint();
        let reask_live = ep.reask == Reask::Live;
        let mut s = Settlement::default();
        let mut cost = 0.0;
        for r in results {
            let Some(line) = by_id.get(&r.custom_id) else {
                tracing::warn!(batch = %b.id, custom_id = %r.custom_id, "a result for no line of this batch; ignored");
                continue;
            };
            let mut attempt = r.attempt(ep, attempt_id(b.id, line.line), started, duration_ms);
            cost += attempt.cost_usd;
            if line.outcome.is_some() {
                // Settled by an earlier reading of these results (this one follows a crash).
                continue;
            }
            let judged = match self.judge(line, r, &mut attempt) {
                // The task is no longer this batch's (finished, cancelled, put back by `run
                // retry-failed`, or in a later batch): only an accepted answer is used (the
                // state machine decides); anything else is just recorded.
                Judged::Done(kind) => Judged::Done(kind),
                _ if !line.held_here => Judged::Recorded,
                other => other,
            };
            s.add(line, judged, attempt, reask_live, report);
        }
        if !s.finishes.is_empty() {
            let only: Vec<Finish> = s.finishes.iter().map(|(_, f)| f.clone()).collect();
            let outcomes = self.store.finishing().finish_tasks(&only).await?;
            for ((n, f), c) in s.finishes.iter().zip(outcomes) {
                if c.newly_done && matches!(f.kind, FinishKind::Complete { .. }) {
                    report.done += 1;
                }
                if c.superseded {
                    // Asked from inputs that changed meanwhile: sent again, rendered anew.
                    s.back.push(f.task_id);
                    if let Some(line) = s.settled.iter_mut().find(|l| l.0 == *n) {
                        line.1 = "superseded";
                    }
                }
            }
        }
        let loose_refs: Vec<(Uuid, Uuid, &AttemptRecord)> = s.loose.iter().map(|(t, r, a)| (*t, *r, a)).collect();
        self.store.finishing().record_attempt_rows(&loose_refs).await?;
        if !s.settled.is_empty() {
            s.back.sort_unstable();
            s.back.dedup();
            self.store.batches().settle_lines(self.owner, b.id, &s.settled, &s.back, &s.live).await?;
        }
        Ok(cost)
    }

    /// What one result means for its task.
    fn judge(&self, line: &LineRow, r: &ResultLine, attempt: &mut AttemptRecord) -> Judged {
        match &r.result {
            LineResult::Answer(a) => {
                let Some(key) = line.output_key else {
                    return Judged::Again("unrendered");
                };
                match validate_answer(line.stage, &a.text, a.finish_reason.as_deref(), line.label) {
                    Ok(()) => {
                        let (template, version) = (
                            line.template.clone().unwrap_or_default(),
                            line.template_version.clone().unwrap_or_default(),
                        );
                        let output =
                            accepted_output(key, line.stage, template, version, self.client.endpoint(), a.clone());
                        Judged::Done(FinishKind::Complete {
                            key,
                            output: Some(Box::new(output)),
                            history_truncated: line.history_truncated,
                        })
                    }
                    Err(rejection) => {
                        attempt.error_class = Some(ErrorClass::Rejected);
                        attempt.error = Some(format!("{}: {}", rejection.code, rejection.message));
                        if u32::try_from(line.reasks).unwrap_or(u32::MAX) >= self.max_reasks {
                            return Judged::Fail(rejected_error(&rejection, &a.text));
                        }
                        let mut conversation = line.conversation.clone();
                        conversation.push((a.text.clone(), reask_feedback(&rejection)));
                        Judged::Reask(conversation)
                    }
                }
            }
            LineResult::Error { permanent: true, message, .. } => Judged::Fail(format!("teacher (batch): {message}")),
            // A line that keeps erroring fails its task after `teacher.max_attempts`, as a live
            // call does, instead of coming back in every batch.
            LineResult::Error { message, .. }
                if u32::try_from(line.errors_before).unwrap_or(u32::MAX) + 1 >= self.max_attempts =>
            {
                Judged::Fail(format!("teacher (batch): {message} ({} errored lines)", line.errors_before + 1))
            }
            LineResult::Error { .. } => Judged::Again("errored"),
            LineResult::Expired => Judged::Again("expired"),
            LineResult::Canceled => Judged::Again("canceled"),
        }
    }
}

/// What reading a batch's results decided, gathered before it is written: the tasks to finish,
/// the attempts recorded without a finish, each line's outcome, the tasks sent back to be
/// asked again (and of those, the ones re-asked live).
#[derive(Default)]
struct Settlement {
    finishes: Vec<(i32, Finish)>,
    loose: Vec<(Uuid, Uuid, AttemptRecord)>,
    settled: Vec<LineOutcome>,
    back: Vec<Uuid>,
    live: Vec<Uuid>,
}

impl Settlement {
    fn add(
        &mut self,
        line: &LineRow,
        judged: Judged,
        attempt: AttemptRecord,
        reask_live: bool,
        report: &mut TickReport,
    ) {
        let finish = |kind, attempt| Finish {
            task_id: line.task_id,
            run_id: line.run_id,
            inputs_version: line.inputs_version,
            kind,
            attempts: vec![attempt],
        };
        match judged {
            Judged::Recorded => {
                self.loose.push((line.task_id, line.run_id, attempt));
                self.settled.push((line.line, "stale", None));
            }
            Judged::Done(kind) => {
                self.finishes.push((line.line, finish(kind, attempt)));
                self.settled.push((line.line, "done", None));
            }
            Judged::Fail(error) => {
                report.task_failures += 1;
                self.finishes.push((line.line, finish(FinishKind::Fail { error }, attempt)));
                self.settled.push((line.line, "failed", None));
            }
            Judged::Reask(conversation) => {
                report.reasked += 1;
                self.loose.push((line.task_id, line.run_id, attempt));
                let outcome = if reask_live { REJECTED_LIVE } else { REJECTED };
                self.settled.push((line.line, outcome, Some(conversation)));
                self.back.push(line.task_id);
                if reask_live {
                    self.live.push(line.task_id);
                }
            }
            Judged::Again(word) => {
                report.sent_back += 1;
                self.loose.push((line.task_id, line.run_id, attempt));
                self.settled.push((line.line, word, None));
                self.back.push(line.task_id);
            }
        }
    }
}

enum Judged {
    Done(FinishKind),
    Fail(String),
    Reask(Vec<(String, String)>),
    Again(&'static str),
    /// The line's task is not this batch's any more: its attempt is recorded, nothing else.
    Recorded,
}

/// What a batch row records of a batch found at the provider.
fn found_row(p: &ProviderBatch) -> Found<'_> {
    Found { provider_id: &p.id, input_file_id: p.input_file_id.as_deref(), status: &p.status }
}

/// Our batch id as the provider sees it (OpenAI metadata, file name).
fn tag(id: Uuid) -> String {
    id.simple().to_string()
}

/// A line's `custom_id`: the batch (32 hex) and the line, within Anthropic's 64 characters.
pub fn custom_id(batch: Uuid, line: i32) -> String {
    format!("{}_{line}", batch.simple())
}

/// The attempt id of a line: the same each time the results are read.
fn attempt_id(batch: Uuid, line: i32) -> Uuid {
    let digest = Sha256::new().chain_update(batch.as_bytes()).chain_update(line.to_be_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_doubles_with_each_refusal_and_ends_with_a_batch() {
        let (now, poll) = (std::time::Instant::now(), Duration::from_secs(30));
        let mut h = Hold::default();
        assert!(!h.holds(now));
        assert_eq!(h.refuse(now, poll), Duration::from_secs(60));
        assert_eq!(h.refuse(now, poll), Duration::from_secs(120));
        assert!(h.holds(now + Duration::from_secs(119)) && !h.holds(now + Duration::from_secs(120)));
        for _ in 0..40 {
            h.refuse(now, poll);
        }
        assert_eq!(h.refuse(now, poll), Hold::MAX, "capped");
        h.release();
        assert!(!h.holds(now), "a batch that ends frees the endpoint");
        assert_eq!(h.refuse(now, poll), Duration::from_secs(60), "and the next refusal starts over");
    }

    #[test]
    fn custom_ids_fit_anthropic_and_attempt_ids_are_stable() {
        let b = Uuid::now_v7();
        let id = custom_id(b, 99_999);
        assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{id}");
        assert_eq!(attempt_id(b, 3), attempt_id(b, 3));
        assert_ne!(attempt_id(b, 3), attempt_id(b, 4));
    }
}
