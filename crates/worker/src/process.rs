//! One task, from its id to a committed row.

use crate::commit::Committer;
use crate::error::WorkerError;
use crate::load::Loader;
use crate::render::{PromptCap, Rendered, render_capped};
use reasonrec_core::attempt::{AttemptRecord, ErrorClass};
use reasonrec_core::settings::EndpointSettings;
use reasonrec_core::stage::{RunState, Stage, TaskState};
use reasonrec_core::validate::{Rejection, judge_score, validate_answer};
use reasonrec_core::{OutputKey, PromptLibrary, Settings, TaskMessage};
use reasonrec_store::Store;
use reasonrec_store::finish::{Finish, FinishKind};
use reasonrec_store::tasks::NewOutput;
use reasonrec_teacher::{ChatAnswer, TeacherError, TeacherPool};
use std::sync::Arc;
use uuid::Uuid;

/// How a task ended. Every variant means "committed (or nothing to commit): ack".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored a new answer (`reused: false`) or found one under the same key (`reused: true`).
    Completed { reused: bool },
    /// The task was already done (a redelivery): nothing called, nothing written.
    AlreadyDone,
    /// Permanent failure or retries spent; the task row holds the error.
    Failed { error: String },
    /// Nothing to do now: the run was cancelled or is closed, the task does not exist any more,
    /// waits for its inputs (it is published again once ready) or failed (`run retry-failed`
    /// puts it back).
    Skipped { reason: String },
    /// The message names another run or stage than the task's row: not ours to work; it is
    /// parked for people to read.
    Mismatch { reason: String },
}

/// How often a task is rendered again when its inputs changed while it was asked.
const MAX_RENDERS: u32 = 3;

/// One render-ask-commit pass: an outcome, or the inputs changed meanwhile.
enum Pass {
    Finished(Outcome),
    Superseded,
}

impl Pass {
    fn of(c: reasonrec_store::finish::FinishOutcome, done: Outcome) -> Self {
        match (c.superseded, c.newly_done) {
            (true, _) => Pass::Superseded,
            (false, true) => Pass::Finished(done),
            (false, false) => Pass::Finished(Outcome::AlreadyDone),
        }
    }
}

#[derive(Clone)]
pub struct TaskProcessor {
    store: Store,
    teacher: TeacherPool,
    prompts: Arc<PromptLibrary>,
    options: ProcessorOptions,
    committer: Committer,
    loader: Loader,
}

/// How a processor asks and what it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ProcessorOptions {
    /// Re-asks after a rejected answer.
    pub max_reasks: u32,
    pub prompt_cap: PromptCap,
    /// Tasks committed together at most (`worker.commit_batch`); 1 = one transaction each.
    pub commit_batch: usize,
}

impl ProcessorOptions {
    pub fn from_settings(s: &reasonrec_core::Settings) -> Self {
        Self {
            max_reasks: s.stages.max_reasks,
            prompt_cap: PromptCap::from_settings(s),
            commit_batch: s.worker.commit_batch,
        }
    }
}

impl TaskProcessor {
    /// Starts the processor's commit batcher, so this must run inside a tokio runtime.
    pub fn new(store: Store, teacher: TeacherPool, prompts: Arc<PromptLibrary>, options: ProcessorOptions) -> Self {
        let committer = Committer::start(store.clone(), options.commit_batch);
        // Reads are batched like commits (same bound): both follow the deliveries in flight.
        let loader = Loader::start(store.clone(), options.commit_batch);
        Self { store, teacher, prompts, options, committer, loader }
    }

    /// The processor a worker process runs: its live endpoints from `settings` (the judge's
    /// apart), the templates `prompts`, the options of `[worker]` and `[sampling]`.
    pub fn from_settings(store: Store, prompts: Arc<PromptLibrary>, settings: &Settings) -> Result<Self, WorkerError> {
        let teacher = TeacherPool::for_worker(settings)?;
        Ok(Self::new(store, teacher, prompts, ProcessorOptions::from_settings(settings)))
    }

    async fn fail(
        &self,
        task_id: Uuid,
        run_id: Uuid,
        error: &str,
        attempts: Vec<AttemptRecord>,
    ) -> Result<(), WorkerError> {
        let kind = FinishKind::Fail { error: error.to_string() };
        self.committer.commit(Finish { task_id, run_id, inputs_version: 0, kind, attempts }).await?;
        Ok(())
    }

    pub fn teacher(&self) -> &TeacherPool {
        &self.teacher
    }

    pub fn prompts(&self) -> &PromptLibrary {
        &self.prompts
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Processes the task of one message. `Err` means nothing was committed and the message
    /// must go back to the queue (a retryable store error); every `Ok` may be acked. When an
    /// upstream output arrives while the task is asked, the answer is superseded and the task is
    /// rendered again (up to [`MAX_RENDERS`] times).
    pub async fn process(&self, msg: &TaskMessage) -> Result<Outcome, WorkerError> {
        for _ in 0..MAX_RENDERS {
            if let Pass::Finished(outcome) = self.pass(msg).await? {
                return Ok(outcome);
            }
            tracing::debug!(task_id = %msg.task_id, "inputs changed while asked; rendering again");
        }
        Err(WorkerError::InputsKeptChanging { task_id: msg.task_id, renders: MAX_RENDERS })
    }

    /// Whether the task's row lets this message be worked: `None` = go on.
    async fn admit(
        &self,
        msg: &TaskMessage,
        task: &reasonrec_store::tasks::TaskContext,
    ) -> Result<Option<Outcome>, WorkerError> {
        if task.run_id != msg.run_id || task.stage != msg.stage {
            let reason = format!(
                "message names run {} stage {}, the task's row run {} stage {}",
                msg.run_id, msg.stage, task.run_id, task.stage
            );
            return Ok(Some(Outcome::Mismatch { reason }));
        }
        let skip = |reason: &str| Ok(Some(Outcome::Skipped { reason: reason.into() }));
        match task.run_state {
            RunState::Cancelled => {
                self.store.tasks().cancel(task.id).await?;
                return skip("run cancelled");
            }
            open if open.is_open() => {}
            other => return skip(&format!("run is {other}")),
        }
        match task.state {
            TaskState::Ready | TaskState::Published => Ok(None),
            TaskState::Done => Ok(Some(Outcome::AlreadyDone)),
            TaskState::Cancelled => skip("task cancelled"),
            TaskState::Waiting => skip("task waits for its inputs; it is published again when ready"),
            TaskState::Failed => skip("task failed; `run retry-failed` puts it back"),
            // A copy of a message from before the run was routed to a Batch API: the batch
            // answers it.
            TaskState::Batched => skip("task is in a provider batch"),
        }
    }

    async fn pass(&self, msg: &TaskMessage) -> Result<Pass, WorkerError> {
        let Some(bundle) = self.loader.load(msg.task_id).await? else {
            return Ok(Pass::Finished(Outcome::Skipped { reason: format!("task {} does not exist", msg.task_id) }));
        };
        let task = &bundle.task;
        if let Some(outcome) = self.admit(msg, task).await? {
            return Ok(Pass::Finished(outcome));
        }
        // What the rest needs of the task; the loaded bundle (input, the load batch's items,
        // dependency outputs: tens of KB) is let go before the call, which is where a task
        // waits longest (2,000 in flight x 200 ms). Measured in BENCHMARKS.md (scenario 2).
        let asked = Asked {
            id: task.id,
            run_id: task.run_id,
            stage: task.stage,
            label: task.label,
            live_reask: task.live_reask,
            inputs_version: task.inputs_version,
            // An incremental run salts the key of a task whose answer expired
            // (`regenerate.ttl_days`), so the same prompt is asked again.
            salt: OutputKey::salt_of(&task.input).map(str::to_owned),
        };
        let rendered = match render_capped(&self.store, &self.prompts, &bundle, self.options.prompt_cap).await {
            Ok(r) => r,
            Err(e) => return self.unrenderable(&asked, e).await,
        };
        drop(bundle);
        if let Some(pass) = self.reuse(&asked, &rendered).await? {
            return Ok(pass);
        }
        self.ask(&asked, rendered).await
    }

    /// A render failure is a fact about the inputs rendered: superseded when they changed meanwhile.
    async fn unrenderable(&self, t: &Asked, e: WorkerError) -> Result<Pass, WorkerError> {
        let error = render_failure(e)?;
        let kind = FinishKind::Unrenderable { error: error.clone() };
        let finish =
            Finish { task_id: t.id, run_id: t.run_id, inputs_version: t.inputs_version, kind, attempts: vec![] };
        let c = self.committer.commit(finish).await?;
        if c.superseded {
            return Ok(Pass::Superseded);
        }
        Ok(Pass::Finished(Outcome::Failed { error }))
    }

    /// An accepted answer to this prompt from any configured teacher (model + parameters) is
    /// reused: the content key names it.
    async fn reuse(&self, t: &Asked, r: &Rendered) -> Result<Option<Pass>, WorkerError> {
        let keys: Vec<OutputKey> = self
            .teacher
            .clients_for(t.stage)
            .map(|c| OutputKey::for_endpoint(t.stage, &r.prompt, c.endpoint(), t.salt.as_deref()))
            .collect();
        let Some(key) = self.store.tasks().first_existing_output(&keys).await? else {
            return Ok(None);
        };
        let kind = FinishKind::Complete { key, output: None, history_truncated: r.truncated };
        let finish =
            Finish { task_id: t.id, run_id: t.run_id, inputs_version: t.inputs_version, kind, attempts: Vec::new() };
        let c = self.committer.commit(finish).await?;
        Ok(Some(Pass::of(c, Outcome::Completed { reused: true })))
    }

    /// Ask, validate, and re-ask with the validator's reason, up to `max_reasks` times. The
    /// content key is the one of the original prompt and the endpoint that answered. A batch
    /// endpoint's rejected answer re-asked here carries its conversation on.
    async fn ask(&self, t: &Asked, r: Rendered) -> Result<Pass, WorkerError> {
        let Rendered { prompt, truncated } = r;
        let (id, run_id, stage) = (t.id, t.run_id, t.stage);
        let mut messages = prompt.messages.clone();
        let mut attempts = Vec::new();
        let mut reasks = 0;
        if t.live_reask
            && let Some(carried) = self.store.batches().live_reask_conversation(id, t.inputs_version).await?
        {
            for (answer, feedback) in carried.conversation {
                self.options.prompt_cap.reask(&mut messages, answer, feedback);
            }
            reasks = u32::try_from(carried.reasks).unwrap_or(u32::MAX);
        }
        let (answer, ep) = loop {
            let call = self.teacher.call_for(stage, &messages).await;
            attempts.extend(call.attempts);
            let (answer, ep) = match call.result {
                Ok(r) => r,
                Err(e) if e.is_fatal() => {
                    // Nothing is committed: the message goes back and this worker stops.
                    return Err(WorkerError::Teacher(e));
                }
                Err(e @ TeacherError::Deferred { .. }) => {
                    // The server asks for a wait past the task's time: its calls are recorded
                    // and the message goes back through a retry tier instead of being held.
                    self.store.finishing().record_attempts(id, run_id, &attempts).await?;
                    return Err(WorkerError::Teacher(e));
                }
                Err(e) => {
                    let error = format!("teacher: {e}");
                    tracing::warn!(task_id = %id, error_class = e.class().as_str(), attempts = attempts.len(), "task failed");
                    self.fail(id, run_id, &error, attempts).await?;
                    return Ok(Pass::Finished(Outcome::Failed { error }));
                }
            };
            let Err(rejection) = validate_answer(stage, &answer.text, answer.finish_reason.as_deref(), t.label) else {
                break (answer, ep);
            };
            if let Some(last) = attempts.last_mut() {
                last.error_class = Some(ErrorClass::Rejected);
                last.error = Some(format!("{}: {}", rejection.code, rejection.message));
            }
            tracing::debug!(task_id = %id, code = rejection.code, reasks, "answer rejected");
            if reasks >= self.options.max_reasks {
                let error = rejected_error(&rejection, &answer.text);
                self.fail(id, run_id, &error, attempts).await?;
                return Ok(Pass::Finished(Outcome::Failed { error }));
            }
            reasks += 1;
            self.options.prompt_cap.reask(&mut messages, answer.text, reask_feedback(&rejection));
        };
        let key = OutputKey::for_endpoint(stage, &prompt, &ep, t.salt.as_deref());
        let output = accepted_output(key, stage, prompt.template, prompt.version, &ep, answer);
        // The answer is paid for: a deadlock or a dropped connection retries the commit (in the
        // batcher) rather than sending the task back to be asked again.
        let kind = FinishKind::Complete { key, output: Some(Box::new(output)), history_truncated: truncated };
        let finish = Finish { task_id: id, run_id, inputs_version: t.inputs_version, kind, attempts };
        let c = self.committer.commit(finish).await?;
        Ok(Pass::of(c, Outcome::Completed { reused: !c.output_inserted }))
    }
}

/// What a pass keeps of a loaded task once its bundle is let go.
struct Asked {
    id: Uuid,
    run_id: Uuid,
    stage: Stage,
    label: Option<bool>,
    live_reask: bool,
    inputs_version: i32,
    /// The content key's salt (`OutputKey::salt_of`).
    salt: Option<String>,
}

/// The failure of a task whose prompt cannot be rendered; a retryable error (the store's) is
/// handed back instead.
pub(crate) fn render_failure(e: WorkerError) -> Result<String, WorkerError> {
    match e {
        e if e.is_retryable() => Err(e),
        e @ WorkerError::PromptTooLong { .. } => Ok(e.to_string()),
        other => Ok(format!("cannot render prompt: {other}")),
    }
}

/// The failure of a task whose answer was rejected after its last re-ask (live or batch).
pub(crate) fn rejected_error(rejection: &Rejection, answer: &str) -> String {
    let raw: String = answer.chars().take(2000).collect();
    format!("answer rejected ({}): {}; raw answer: {raw}", rejection.code, rejection.message)
}

/// What a re-ask tells the teacher of its rejected answer (live or batch).
pub(crate) fn reask_feedback(rejection: &Rejection) -> String {
    format!("Your answer was not accepted: {}. Answer again, following the instructions above.", rejection.message)
}

/// The output row of an accepted answer of `ep` (live or batch).
pub(crate) fn accepted_output(
    key: OutputKey,
    stage: reasonrec_core::Stage,
    template: String,
    template_version: String,
    ep: &EndpointSettings,
    answer: ChatAnswer,
) -> NewOutput {
    let score = if stage == reasonrec_core::Stage::Judge { judge_score(&answer.text) } else { None };
    NewOutput {
        key,
        stage,
        text: answer.text,
        template,
        template_version,
        model: ep.model.clone(),
        params: serde_json::to_value(&ep.params).unwrap_or_default(),
        input_tokens: i32::try_from(answer.input_tokens).unwrap_or(i32::MAX),
        output_tokens: i32::try_from(answer.output_tokens).unwrap_or(i32::MAX),
        score,
    }
}
