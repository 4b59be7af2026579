//! Configuration: built-in defaults, then one TOML file, then environment overrides
//! `REASONREC__SECTION__KEY=value` (double underscores, so keys like `max_connections` stay reachable).
//!
//! Secrets are never part of this tree: an endpoint names the environment variable that holds
//! its API key (`api_key_env`), and the key is read at the moment a client is built.

use crate::error::CoreError;
use crate::stage::Stage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "REASONREC";
/// File read when no `--config` is given and it exists in the working directory.
pub const DEFAULT_FILE: &str = "reasonrec.toml";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub sampling: SamplingSettings,
    pub stages: StageSettings,
    pub teacher: TeacherSettings,
    pub worker: WorkerSettings,
    pub coordinator: CoordinatorSettings,
    pub regenerate: RegenerateSettings,
    pub prompts: PromptSettings,
    pub log: LogSettings,
    pub trainer: TrainerSettings,
    pub metrics: MetricsSettings,
    pub schedule: ScheduleSettings,
    pub retention: RetentionSettings,
    pub batch: BatchSettings,
}

/// How the batch submitter (`worker::batch`) uses the endpoints whose `mode = "batch"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// How often open batches are polled and ready tasks are claimed into new ones.
    pub poll_ms: u64,
    /// Lines of a run's first batch on an endpoint: small, so that item profiles come back early
    /// and the stages downstream can follow. Each next batch doubles while tasks of the run still
    /// wait for inputs, up to `max_lines`.
    pub first_lines: u32,
    /// The most lines of one batch (cut to the provider's limit: OpenAI 50,000, Anthropic
    /// 100,000).
    pub max_lines: u32,
    /// The most bytes of one batch's requests (cut to the provider's limit: OpenAI 200 MB,
    /// Anthropic 256 MB); lines past it wait for the next batch.
    pub max_bytes: u64,
    /// Batches of one endpoint open at the provider at once.
    pub max_open: u32,
    /// The batch turnaround assumed before any batch of the endpoint has ended (then the mean
    /// of its last 20 is used).
    pub turnaround_secs: u64,
    /// When a batch run must be finished, `HH:MM` (UTC, the next such time after the run is
    /// created); `run create --deadline` overrides it. Unset: no deadline, batches only.
    pub deadline: Option<String>,
    /// Tasks per second the live endpoints can take when a run spills to them; 0 = the sum of
    /// their `requests_per_minute` / 60 (none when one of them is unlimited). The deadline keeps
    /// this much time for the live endpoints to do what batches might not.
    pub live_tasks_per_sec: f64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            poll_ms: 30_000,
            first_lines: 200,
            max_lines: 50_000,
            max_bytes: 200_000_000,
            max_open: 8,
            turnaround_secs: 3_600,
            deadline: None,
            live_tasks_per_sec: 0.0,
        }
    }
}

impl BatchSettings {
    /// Tasks per second the live endpoints of `teacher` take when a run spills to them
    /// (`live_tasks_per_sec`, else their requests/min summed); None when not known.
    pub fn live_rate(&self, teacher: &TeacherSettings) -> Option<f64> {
        if self.live_tasks_per_sec > 0.0 {
            return Some(self.live_tasks_per_sec);
        }
        let live: Vec<&EndpointSettings> = teacher.endpoints.iter().filter(|e| e.mode == EndpointMode::Live).collect();
        (!live.is_empty() && live.iter().all(|e| e.requests_per_minute > 0))
            .then(|| live.iter().map(|e| f64::from(e.requests_per_minute) / 60.0).sum())
    }

    /// The deadline as a time from now ([`Self::deadline_after`]).
    pub fn deadline_from_now(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        self.deadline_after(chrono::Utc::now())
    }

    /// The deadline as a time: the next `HH:MM` (UTC) after `now`, or an RFC 3339 time as it is.
    pub fn deadline_after(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        let Some(text) = self.deadline.as_deref() else { return Ok(None) };
        parse_deadline(text, now).map(Some)
    }
}

/// `HH:MM` (UTC; the next such time after `now`) or an RFC 3339 time.
pub fn parse_deadline(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let time = chrono::NaiveTime::parse_from_str(text, "%H:%M")
        .map_err(|_| format!("{text:?} is neither HH:MM (UTC) nor an RFC 3339 time"))?;
    let today = now.date_naive().and_time(time).and_utc();
    Ok(if today > now { today } else { today + chrono::TimeDelta::days(1) })
}

/// What a teacher endpoint is asked through: one HTTP call per prompt (`live`) or the
/// provider's Batch API (`batch`: OpenAI Batch, Anthropic Message Batches; half the price, results
/// within 24 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Live,
    Batch,
}

/// Where a run's ready tasks go: to RabbitMQ and the live workers, or into provider batches
/// (`runs.route`). A run is routed `batch` when its settings name a batch endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunRoute {
    #[default]
    Live,
    Batch,
}

impl RunRoute {
    pub fn of(teacher: &TeacherSettings) -> Self {
        if teacher.endpoints.iter().any(|e| e.mode == EndpointMode::Batch) { RunRoute::Batch } else { RunRoute::Live }
    }
}

crate::vocabulary!(RunRoute, "run route", {
    Live => "live",
    Batch => "batch",
});

/// What `reasonrec run prune` (and, with `on_schedule`, the leader after each scheduled tick)
/// deletes: the task rows of finished runs outside the policy, the ledger outputs no remaining
/// task uses, and the rows of dataset versions no remaining run uses. Never deleted: unfinished
/// runs, snapshotted runs, runs an export recorded, the latest version of each dataset name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// The newest completed runs of each dataset name kept whole (at least 1: the next
    /// incremental run compares with the latest).
    pub keep_completed: u32,
    /// Runs created within this many days are kept whatever their number; 0 = no age rule.
    pub keep_days: u32,
    /// The leading coordinator prunes after each scheduled incremental run it creates.
    pub on_schedule: bool,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self { keep_completed: 3, keep_days: 0, on_schedule: false }
    }
}

/// Scheduled incremental runs, fired by the leading coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSettings {
    pub jobs: Vec<ScheduleJob>,
}

/// One job: at each time `cron` matches (UTC; 5 fields, or 6 with seconds first), an
/// incremental run of `dataset` is created, unless a run of that dataset is still unfinished.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleJob {
    pub name: String,
    pub cron: String,
    pub dataset: String,
}

/// The worker's operational HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address the worker serves on; empty = off. Loopback by default; containers set
    /// `0.0.0.0:9464`. When the port is taken (several workers on one machine) the worker logs
    /// it and runs without the endpoint.
    pub bind: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1:9464".into() }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Postgres URL. A password in it never reaches a log line (see [`redact_url`]).
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/reasonrec".into(),
            max_connections: 16,
            acquire_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated, the kind RabbitMQ recommends for durable work queues.
    Quorum,
    Classic,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    pub url: String,
    /// Every exchange and queue name starts with this prefix (tests use a unique one).
    pub prefix: String,
    pub queue_type: QueueType,
    /// Bound on the work queue's length; publishes beyond it are nacked by the broker
    /// (`x-overflow=reject-publish`) and the outbox retries them later. 0 = unbounded. Exact on
    /// classic queues; quorum queues (RabbitMQ 3.10) apply it loosely and may overshoot.
    pub max_length: u32,
    /// Messages published before their confirms are awaited together.
    pub publish_batch: usize,
    pub confirm_timeout_secs: u64,
    /// Quorum queues: a message delivered this many times without an ack (workers crashing on
    /// it, or handing it back) is dead-lettered; the coordinator then marks its task failed with
    /// the reason. 0 = no limit. Ignored on classic queues.
    pub delivery_limit: u32,
    /// Delays of the retry tiers: a task whose commit failed with a retryable error (Postgres
    /// down, deadlock after in-process retries) waits in `<prefix>.retry.<secs>s` and comes back
    /// to the work queue when its TTL runs out, instead of a hot requeue loop. The n-th retry
    /// uses the n-th delay (the last one from then on).
    pub retry_delays_secs: Vec<u64>,
    /// Retries through the tiers before the task is dead-lettered with its last error.
    pub max_retries: u32,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "reasonrec".into(),
            queue_type: QueueType::Quorum,
            max_length: 0,
            publish_batch: 2000,
            confirm_timeout_secs: 30,
            delivery_limit: 10,
            retry_delays_secs: vec![10, 60, 600],
            max_retries: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSettings {
    /// An interaction is a like when `rating > like_threshold`.
    pub like_threshold: f32,
    /// k: interactions shown before each target. 0 = the family's default (MovieLens 20,
    /// Amazon 4, generic 10), the paper's values.
    pub history_len: usize,
    /// Users with fewer interactions are not planned (the user side of a k-core).
    pub min_interactions: usize,
    /// A target needs at least this many history interactions before it.
    pub min_history: usize,
    /// The user profile is written from the earliest interactions, up to this many; history
    /// windows never reach into them.
    pub profile_window: usize,
    /// Which leave-last-out splits get reasoning tasks: test = last interaction, validation =
    /// second to last, train = the ones before.
    pub splits: Vec<crate::stage::Split>,
    /// Train targets per user, latest first (0 = every eligible one).
    pub train_targets_per_user: usize,
    /// Cap on the number of users planned (0 = all), taken in user order.
    pub max_users: usize,
    /// Keep, per split, as many like as dislike reasoning targets: the majority label is
    /// subsampled (deterministically, by `seed`). Users left without targets are not planned.
    pub balance_labels: bool,
    pub seed: u64,
    /// Cap on a rendered prompt's length in words (0 = none); see `overlong`.
    pub max_prompt_words: usize,
    /// What a worker does with a prompt over `max_prompt_words`.
    pub overlong: Overlong,
}

/// Handling of prompts over the word cap.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Drop the oldest history entries until it fits (at least one stays); counted per task.
    Truncate,
    /// Fail the task without calling the teacher (the paper dropped such users); counted.
    Drop,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        Self {
            like_threshold: 3.0,
            history_len: 0,
            min_interactions: 3,
            min_history: 1,
            profile_window: 15,
            splits: crate::stage::Split::ALL.to_vec(),
            train_targets_per_user: 1,
            max_users: 0,
            balance_labels: false,
            seed: 0,
            max_prompt_words: 0,
            overlong: Overlong::Truncate,
        }
    }
}

impl SamplingSettings {
    /// k for a dataset family, resolving 0 to the paper's default.
    pub fn history_len_for(&self, family: crate::data::Family) -> usize {
        use crate::data::Family;
        match (self.history_len, family) {
            (0, Family::Movielens) => 20,
            (0, Family::Amazon) => 4,
            (0, Family::Generic) => 10,
            (k, _) => k,
        }
    }
}

/// Which teacher stages a run plans. Switching a profile stage off gives the paper's ablations:
/// reasoning then sees raw item text, or no user profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageSettings {
    pub item_profile: bool,
    pub user_profile: bool,
    /// Re-asks after a rejected answer (the validator's reason is added to the conversation).
    pub max_reasks: u32,
    /// A judge task per reasoning task: a teacher scores the answer's faithfulness to the
    /// prompt's facts and its agreement with the label (`prompts/judge.*.j2`, "Score: 1-5").
    pub judge: bool,
    /// The live endpoints (by name) that answer judge tasks, and only those; the other stages
    /// never go to them. Empty: every endpoint answers every stage.
    pub judge_endpoints: Vec<String>,
}

impl Default for StageSettings {
    fn default() -> Self {
        Self { item_profile: true, user_profile: true, max_reasks: 2, judge: false, judge_endpoints: Vec::new() }
    }
}

impl StageSettings {
    /// Whether endpoint `name` answers tasks of `stage`.
    pub fn endpoint_serves(&self, name: &str, stage: Stage) -> bool {
        serves_stage(&self.judge_endpoints, name, stage)
    }
}

/// Whether endpoint `name` answers tasks of `stage` when `judge_endpoints` are the judges' own
/// (`stages.judge_endpoints`; empty: every endpoint answers every stage).
pub fn serves_stage(judge_endpoints: &[String], name: &str, stage: Stage) -> bool {
    judge_endpoints.is_empty() || judge_endpoints.iter().any(|j| j == name) == (stage == Stage::Judge)
}

/// Parameters sent with every chat completion; they are part of an output's content key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub max_tokens: u32,
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.1, top_p: None, max_tokens: 256, stop: Vec::new() }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSettings {
    pub name: String,
    /// Base URL up to and including `/v1`.
    pub base_url: String,
    /// The wire protocol the endpoint speaks: OpenAI chat completions (vLLM, llama.cpp, OpenAI)
    /// or Anthropic Messages.
    pub protocol: Protocol,
    /// `anthropic-version` header sent to an Anthropic endpoint.
    pub anthropic_version: String,
    pub model: String,
    /// Name of the environment variable holding the API key; none for local servers.
    pub api_key_env: Option<String>,
    pub weight: u32,
    pub max_in_flight: usize,
    /// Limits of the endpoint as a whole (shared by every worker process); 0 = unlimited.
    pub requests_per_minute: u32,
    /// Prompt + completion tokens per minute (how most APIs count).
    pub tokens_per_minute: u32,
    pub input_tokens_per_minute: u32,
    pub output_tokens_per_minute: u32,
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// US dollars per million tokens.
    pub price_input_per_mtok: f64,
    pub price_output_per_mtok: f64,
    /// Prompt tokens read from the server's prompt cache (Anthropic `cache_read_input_tokens`);
    /// unset: 0.1 x `price_input_per_mtok`, Anthropic's published ratio.
    pub price_cache_read_per_mtok: Option<f64>,
    /// Prompt tokens written to the cache (`cache_creation_input_tokens`); unset: 1.25 x
    /// `price_input_per_mtok` (the 5-minute cache's ratio).
    pub price_cache_write_per_mtok: Option<f64>,
    /// A response body over this many bytes is not read further (error class `too_large`).
    pub max_response_bytes: u64,
    /// An answer over this many characters is not stored (error class `too_large`).
    pub max_answer_chars: u32,
    /// The model's context window in tokens (prompt + `params.max_tokens`); 0 = not known, no
    /// check. A prompt that would not fit has its oldest history trimmed before it is sent
    /// (counted in `tasks.history_truncated`) instead of drawing a 400.
    pub context_tokens: u32,
    /// Characters per token of the estimate checked against `context_tokens`. Lower is more
    /// cautious: English prose runs near 4 with BPE tokenizers, titles, numbers and other
    /// languages lower.
    pub chars_per_token: f32,
    /// `live` (default) or `batch` (the provider's Batch API; see `[batch]`).
    pub mode: EndpointMode,
    /// The share of the configured prices a batch answer costs (both providers: 0.5).
    pub batch_price_factor: f64,
    /// Where a batch endpoint's rejected answers are asked again: in the task's next batch
    /// (default) or at once by the live endpoints (`live`), with the rejected answer and the
    /// validator's reason. A live endpoint always re-asks live.
    pub reask: Reask,
    pub params: SamplingParams,
}

/// Where a batch endpoint's rejected answers are re-asked ([`EndpointSettings::reask`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reask {
    /// In the task's next batch: half the price, a batch turnaround later.
    #[default]
    NextBatch,
    /// By the live endpoints (RabbitMQ and the live workers): the list price, at once.
    Live,
}

/// The wire protocol of a teacher endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `POST {base_url}/chat/completions`, `Authorization: Bearer`.
    #[default]
    OpenAi,
    /// `POST {base_url}/messages`, `x-api-key` and `anthropic-version`.
    Anthropic,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::Anthropic => "anthropic",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EndpointSettings {
    /// The most prompt tokens (by this endpoint's estimate) that leave room for the answer in
    /// its context window; None when the window is not known.
    pub fn prompt_token_budget(&self) -> Option<u32> {
        (self.context_tokens > 0).then(|| self.context_tokens.saturating_sub(self.params.max_tokens))
    }

    /// US dollars for one answer's tokens: prompt tokens at the input price, cache reads and
    /// writes at theirs, completion tokens at the output price; a batch endpoint's answers at
    /// `batch_price_factor` of that.
    pub fn cost_usd(&self, tokens: &TokenUsage) -> f64 {
        let read = self.price_cache_read_per_mtok.unwrap_or(self.price_input_per_mtok * 0.1);
        let write = self.price_cache_write_per_mtok.unwrap_or(self.price_input_per_mtok * 1.25);
        let list = (f64::from(tokens.uncached_input()) * self.price_input_per_mtok
            + f64::from(tokens.cache_read) * read
            + f64::from(tokens.cache_write) * write
            + f64::from(tokens.output) * self.price_output_per_mtok)
            / 1e6;
        match self.mode {
            EndpointMode::Live => list,
            EndpointMode::Batch => list * self.batch_price_factor,
        }
    }
}

/// The tokens one answer used, as the ledger counts them: `input` is the whole prompt, cached
/// parts included (OpenAI's `prompt_tokens`; Anthropic's `input_tokens` plus both cache counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u32,
    pub output: u32,
    /// Of `input`: read from the prompt cache.
    pub cache_read: u32,
    /// Of `input`: written to the prompt cache.
    pub cache_write: u32,
}

impl TokenUsage {
    /// Prompt tokens neither read from nor written to the cache.
    pub fn uncached_input(&self) -> u32 {
        self.input.saturating_sub(self.cache_read).saturating_sub(self.cache_write)
    }
}

impl Default for EndpointSettings {
    fn default() -> Self {
        Self {
            name: "mock".into(),
            base_url: "http://127.0.0.1:8089/v1".into(),
            protocol: Protocol::OpenAi,
            anthropic_version: "2023-06-01".into(),
            model: "mock-teacher".into(),
            api_key_env: None,
            weight: 1,
            max_in_flight: 256,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            input_tokens_per_minute: 0,
            output_tokens_per_minute: 0,
            timeout_secs: 60,
            connect_timeout_secs: 5,
            price_input_per_mtok: 0.0,
            price_output_per_mtok: 0.0,
            price_cache_read_per_mtok: None,
            price_cache_write_per_mtok: None,
            max_response_bytes: 4 * 1024 * 1024,
            max_answer_chars: 32_000,
            context_tokens: 0,
            chars_per_token: 3.0,
            mode: EndpointMode::Live,
            batch_price_factor: 0.5,
            reask: Reask::NextBatch,
            params: SamplingParams::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherSettings {
    pub endpoints: Vec<EndpointSettings>,
    /// Attempts per task for transient errors (429, 5xx, timeouts, malformed bodies).
    pub max_attempts: u32,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Transient failures in a row that take an endpoint out (circuit breaker).
    pub breaker_failures: u32,
    /// How long it stays out before a probe (doubles while probes fail, up to 60 s).
    pub breaker_cooldown_secs: u64,
    /// Worker processes share each endpoint's limits through heartbeats in Postgres; a worker
    /// renews its lease this often and holds 1 / (live workers) of every limit.
    pub lease_interval_ms: u64,
    /// The longest pause a server may ask for (Retry-After in any form, or the reset of an
    /// exhausted rate-limit budget); longer requests are cut to this.
    pub max_retry_after_secs: u64,
    /// The longest one task may spend asking (waits included). A task that would wait past it
    /// goes back to the queue through a retry tier instead of holding its delivery: keep it
    /// below RabbitMQ's consumer timeout (30 min by default).
    pub max_call_secs: u64,
}

impl TeacherSettings {
    /// How often workers renew their endpoint leases, when any endpoint has a limit to share.
    pub fn lease_interval(&self) -> Option<std::time::Duration> {
        let limited = self.endpoints.iter().any(|e| {
            e.requests_per_minute > 0
                || e.tokens_per_minute > 0
                || e.input_tokens_per_minute > 0
                || e.output_tokens_per_minute > 0
        });
        limited.then(|| std::time::Duration::from_millis(self.lease_interval_ms))
    }
}

impl Default for TeacherSettings {
    fn default() -> Self {
        Self {
            endpoints: vec![EndpointSettings::default()],
            max_attempts: 6,
            backoff_min_ms: 200,
            backoff_max_ms: 30_000,
            breaker_failures: 5,
            breaker_cooldown_secs: 5,
            lease_interval_ms: 2_000,
            max_retry_after_secs: 300,
            max_call_secs: 1_200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Tasks processed at once; also the consumer prefetch.
    pub concurrency: u16,
    /// On SIGTERM, time given to in-flight tasks before they are handed back unacked.
    pub shutdown_grace_secs: u64,
    /// Finished tasks committed in one transaction at most; a batch takes what is waiting
    /// when the previous commit ends (no timer). 1 = a transaction per task.
    pub commit_batch: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { concurrency: 64, shutdown_grace_secs: 30, commit_batch: 256 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSettings {
    /// How often the outbox looks for ready tasks and the run for completion.
    pub poll_interval_ms: u64,
    /// Tasks inserted per planning statement. Up to three batches are in memory at once (two
    /// being inserted while the next is planned): a 1M-task plan peaked at 140 MiB at 2,000;
    /// with one insert in flight it was 251 MiB at 5,000 and 101 MiB at 2,000 (BENCHMARKS.md).
    pub plan_batch: usize,
    /// At most this many tasks of a run are published and not yet finished. Ready tasks go out
    /// in creation order (user by user), so downstream tasks that become ready are published
    /// ahead of the rest of the backlog, and the broker never holds a whole large run.
    pub max_outstanding: usize,
    /// A published task still unfinished this long after its message left the work queue is
    /// published again (its message was lost); time spent waiting in the queue does not count
    /// (`coordinator::departures`). Keep it above the broker's consumer timeout (30 min by
    /// default), the longest retry tier and the longest a task may legitimately take.
    pub republish_after_secs: u64,
    /// The coordinator's HTTP endpoint: status page (`/`), `/api/runs`, `/metrics`, `/healthz`,
    /// `/readyz`; empty = off.
    pub http_bind: String,
    /// Environment variable holding the status page's token. Bound beyond loopback, the page
    /// and its API need `Authorization: Bearer <token>` (or `?token=`), and the coordinator
    /// refuses to start without the variable set.
    pub status_token_env: String,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 250,
            plan_batch: 2000,
            max_outstanding: 20_000,
            republish_after_secs: 2_400,
            http_bind: "127.0.0.1:9465".into(),
            status_token_env: "REASONREC_STATUS_TOKEN".into(),
        }
    }
}

/// Incremental regeneration (`run create --incremental`): a task of the dataset's previous
/// completed run is carried over (done, no teacher call) when its fingerprint is unchanged,
/// unless one of these says it is stale anyway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegenerateSettings {
    /// Outputs older than this many days are made again (`expired`); 0 = they never expire.
    pub ttl_days: u32,
    /// Tasks that failed in the previous run are tried again (`failed`); false: they stay failed.
    pub redo_failed: bool,
    /// Outputs made by a model or sampling parameters that no configured endpoint has are made
    /// again (`teacher_changed`); false: they are kept.
    pub redo_other_teacher: bool,
}

impl Default for RegenerateSettings {
    fn default() -> Self {
        Self { ttl_days: 0, redo_failed: true, redo_other_teacher: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptSettings {
    pub dir: PathBuf,
}

impl Default for PromptSettings {
    fn default() -> Self {
        Self { dir: PathBuf::from("prompts") }
    }
}

/// The student: its export (`reasonrec train export`) and its LoRA fine-tuning spec
/// (`reasonrec train launch`). Defaults follow the paper (Llama-2-7b-chat, LoRA r 8, alpha 16,
/// dropout 0.05 on q_proj and v_proj, cut-off 2,048 tokens, few-shot sets of 64/128/256).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerSettings {
    /// Hugging Face name (or local folder) of the student's base model.
    pub base_model: String,
    pub lora_r: u32,
    pub lora_alpha: u32,
    pub lora_dropout: f64,
    pub lora_target_modules: Vec<String>,
    /// The paper used 1e-4 (Amazon) and 4e-5 (MovieLens-1M); 1e-4 is the default.
    pub learning_rate: f64,
    pub epochs: u32,
    /// Per-device batch size; the effective batch is `batch_size * gradient_accumulation_steps`.
    pub batch_size: u32,
    pub gradient_accumulation_steps: u32,
    /// Tokens per example (prompt + answer); longer prompts lose their oldest history.
    pub max_seq_length: u32,
    /// Epochs without a better validation AUC before training stops.
    pub early_stopping_patience: u32,
    /// Seed of training and of the export's few-shot draw.
    pub seed: u64,
    /// Sizes of the few-shot training sets written by the export (half like, half dislike,
    /// each set inside the next).
    pub few_shot: Vec<usize>,
    /// What `train launch` runs; `{spec}` is replaced by the spec file's path.
    pub command: Vec<String>,
}

impl Default for TrainerSettings {
    fn default() -> Self {
        Self {
            base_model: "meta-llama/Llama-2-7b-chat-hf".into(),
            lora_r: 8,
            lora_alpha: 16,
            lora_dropout: 0.05,
            lora_target_modules: vec!["q_proj".into(), "v_proj".into()],
            learning_rate: 1e-4,
            epochs: 3,
            batch_size: 4,
            gradient_accumulation_steps: 4,
            max_seq_length: 2048,
            early_stopping_patience: 2,
            seed: 42,
            few_shot: vec![64, 128, 256],
            command: ["python3", "scripts/train_student.py", "--spec", "{spec}"].map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info,sqlx=error,lapin=warn".into() }
    }
}

impl Settings {
    /// Defaults, then `file` (must exist when given; otherwise `reasonrec.toml` if present),
    /// then `REASONREC__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, CoreError> {
        let defaults = config::Config::try_from(&Settings::default()).map_err(|e| CoreError::Config(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(CoreError::Config(format!("config file {} does not exist", path.display())));
                }
                builder = builder.add_source(config::File::from(path).required(true));
            }
            None => {
                builder = builder.add_source(config::File::with_name(DEFAULT_FILE).required(false));
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").try_parsing(true),
        );
        let settings: Settings =
            builder.build().and_then(|c| c.try_deserialize()).map_err(|e| CoreError::Config(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that serde cannot express; each message names the key.
    /// `stages.judge_endpoints`: live endpoints that exist, with another endpoint left for the
    /// other stages. A batch endpoint answers every stage of the runs routed to it, so the two
    /// cannot be combined.
    fn validate_judge_endpoints(&self) -> Result<(), CoreError> {
        let judges = &self.stages.judge_endpoints;
        if judges.is_empty() {
            return Ok(());
        }
        let bad = |why: String| Err(CoreError::Config(format!("stages.judge_endpoints: {why}")));
        for name in judges {
            match self.teacher.endpoints.iter().find(|e| &e.name == name) {
                None => return bad(format!("{name:?} is not the name of a teacher endpoint")),
                Some(e) if e.mode != EndpointMode::Live => {
                    return bad(format!("{name:?} is a batch endpoint; judges are asked live"));
                }
                Some(_) => {}
            }
        }
        if self.teacher.endpoints.iter().any(|e| e.mode == EndpointMode::Batch) {
            return bad("cannot be combined with a batch endpoint (it answers every stage of its runs)".into());
        }
        if self.teacher.endpoints.iter().all(|e| judges.contains(&e.name)) {
            return bad("every endpoint is a judge endpoint: none is left for the other stages".into());
        }
        Ok(())
    }

    /// Checks every section; the error names the first key at fault (`teacher.endpoints[1].model: ...`).
    pub fn validate(&self) -> Result<(), CoreError> {
        self.validate_services()?;
        self.validate_teacher()?;
        self.validate_judge_endpoints()?;
        self.validate_batch()?;
        self.trainer.validate()?;
        for (i, ep) in self.teacher.endpoints.iter().enumerate() {
            ep.validate(i)?;
        }
        Ok(())
    }

    /// Database, broker, sampling, worker and retention.
    fn validate_services(&self) -> Result<(), CoreError> {
        if !(self.database.url.starts_with("postgres://") || self.database.url.starts_with("postgresql://")) {
            return bad("database.url", "must start with postgres://".into());
        }
        if !(self.broker.url.starts_with("amqp://") || self.broker.url.starts_with("amqps://")) {
            return bad("broker.url", "must start with amqp:// or amqps://".into());
        }
        if self.broker.prefix.is_empty() || self.broker.prefix.len() > 100 {
            return bad("broker.prefix", "must be 1 to 100 characters".into());
        }
        if self.broker.publish_batch == 0 {
            return bad("broker.publish_batch", "must be at least 1".into());
        }
        if self.retention.keep_completed == 0 {
            return bad(
                "retention.keep_completed",
                "must be at least 1 (incremental runs compare with the latest)".into(),
            );
        }
        if self.broker.retry_delays_secs.is_empty() || self.broker.retry_delays_secs.contains(&0) {
            return bad("broker.retry_delays_secs", "needs at least one delay, each at least 1 second".into());
        }
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency", "must be at least 1".into());
        }
        Ok(())
    }

    /// `[teacher]` as a whole: endpoints named once, re-asks with somewhere to go, call limits.
    fn validate_teacher(&self) -> Result<(), CoreError> {
        let t = &self.teacher;
        if t.endpoints.is_empty() {
            return bad("teacher.endpoints", "at least one endpoint is needed".into());
        }
        if t.lease_interval_ms < 100 {
            return bad("teacher.lease_interval_ms", "must be at least 100".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, ep) in t.endpoints.iter().enumerate() {
            if !names.insert(ep.name.as_str()) {
                return bad(&format!("teacher.endpoints[{i}].name"), format!("{:?} is used twice", ep.name));
            }
        }
        let has_live = self.has_live_endpoint();
        for (i, ep) in t.endpoints.iter().enumerate() {
            if ep.mode == EndpointMode::Batch && ep.reask == Reask::Live && !has_live {
                return bad(
                    &format!("teacher.endpoints[{i}].reask"),
                    "\"live\" needs a live endpoint to re-ask on".into(),
                );
            }
        }
        if t.max_attempts == 0 {
            return bad("teacher.max_attempts", "must be at least 1".into());
        }
        if t.max_call_secs == 0 || t.max_call_secs >= 1_800 {
            return bad(
                "teacher.max_call_secs",
                format!("{} is not within 1..1800 (below RabbitMQ's consumer timeout)", t.max_call_secs),
            );
        }
        if t.max_retry_after_secs == 0 || t.max_retry_after_secs > t.max_call_secs {
            return bad(
                "teacher.max_retry_after_secs",
                format!("{} is not within 1..=teacher.max_call_secs", t.max_retry_after_secs),
            );
        }
        Ok(())
    }

    fn has_live_endpoint(&self) -> bool {
        self.teacher.endpoints.iter().any(|e| e.mode == EndpointMode::Live)
    }

    /// `[batch]`: a deadline needs a live endpoint to spill to.
    fn validate_batch(&self) -> Result<(), CoreError> {
        let b = &self.batch;
        match b.deadline_after(chrono::Utc::now()) {
            Err(e) => return bad("batch.deadline", e),
            Ok(Some(_)) if !self.has_live_endpoint() => {
                return bad("batch.deadline", "needs a live endpoint to spill the rest to".into());
            }
            Ok(_) => {}
        }
        if !(b.live_tasks_per_sec.is_finite() && b.live_tasks_per_sec >= 0.0) {
            return bad("batch.live_tasks_per_sec", "must be a non-negative number".into());
        }
        if b.poll_ms < 10 || b.first_lines == 0 || b.max_lines == 0 || b.max_open == 0 || b.max_bytes < 1024 {
            return bad(
                "batch",
                "poll_ms must be at least 10, first_lines, max_lines and max_open at least 1, max_bytes at least 1024"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A configuration error naming `key`.
fn bad(key: &str, why: String) -> Result<(), CoreError> {
    Err(CoreError::Config(format!("{key}: {why}")))
}

impl TrainerSettings {
    fn validate(&self) -> Result<(), CoreError> {
        let t = self;
        if t.base_model.is_empty() {
            return bad("trainer.base_model", "must not be empty".into());
        }
        if t.lora_r == 0 || t.lora_alpha == 0 {
            return bad("trainer.lora_r", "lora_r and lora_alpha must be at least 1".into());
        }
        if !(0.0..1.0).contains(&t.lora_dropout) {
            return bad("trainer.lora_dropout", format!("{} is not in [0, 1)", t.lora_dropout));
        }
        if t.lora_target_modules.is_empty() || t.lora_target_modules.iter().any(String::is_empty) {
            return bad("trainer.lora_target_modules", "needs at least one module name".into());
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return bad("trainer.learning_rate", "must be a positive number".into());
        }
        if t.epochs == 0 || t.batch_size == 0 || t.gradient_accumulation_steps == 0 {
            return bad(
                "trainer.epochs",
                "epochs, batch_size and gradient_accumulation_steps must be at least 1".into(),
            );
        }
        if t.max_seq_length < 16 {
            return bad("trainer.max_seq_length", "must be at least 16".into());
        }
        if t.few_shot.contains(&0) {
            return bad("trainer.few_shot", "sizes must be at least 1".into());
        }
        if t.command.is_empty() {
            return bad("trainer.command", "needs at least the program to run".into());
        }
        Ok(())
    }
}

impl EndpointSettings {
    /// Checks `teacher.endpoints[i]` on its own.
    fn validate(&self, i: usize) -> Result<(), CoreError> {
        let ep = self;
        let key = |k: &str| format!("teacher.endpoints[{i}].{k}");
        if !(ep.base_url.starts_with("http://") || ep.base_url.starts_with("https://")) {
            return bad(&key("base_url"), format!("{:?} is not an http(s) URL", ep.base_url));
        }
        if ep.model.is_empty() {
            return bad(&key("model"), "must not be empty".into());
        }
        if ep.timeout_secs == 0 {
            return bad(&key("timeout_secs"), "must be at least 1".into());
        }
        if ep.params.max_tokens == 0 {
            return bad(&key("params.max_tokens"), "must be at least 1".into());
        }
        if ep.max_response_bytes < 1024 {
            return bad(&key("max_response_bytes"), "must be at least 1024".into());
        }
        if ep.max_answer_chars == 0 {
            return bad(&key("max_answer_chars"), "must be at least 1".into());
        }
        if !(ep.chars_per_token.is_finite() && ep.chars_per_token >= 0.5) {
            return bad(&key("chars_per_token"), format!("{} is not a number of at least 0.5", ep.chars_per_token));
        }
        if ep.context_tokens > 0 && ep.context_tokens <= ep.params.max_tokens {
            return bad(
                &key("context_tokens"),
                format!(
                    "{} leaves no room for a prompt beside params.max_tokens = {}",
                    ep.context_tokens, ep.params.max_tokens
                ),
            );
        }
        if ep.protocol == Protocol::Anthropic {
            if !(0.0..=1.0).contains(&ep.params.temperature) {
                let t = ep.params.temperature;
                return bad(&key("params.temperature"), format!("{t} is not within 0..=1 (Anthropic's range)"));
            }
            if ep.params.top_p.is_some() {
                return bad(
                    &key("params.top_p"),
                    "an anthropic endpoint takes temperature or top_p, not both (newer models refuse the pair \
                     with a 400); leave top_p unset"
                        .into(),
                );
            }
            if ep.anthropic_version.trim().is_empty() {
                return bad(&key("anthropic_version"), "must not be empty".into());
            }
        }
        if !(ep.batch_price_factor.is_finite() && ep.batch_price_factor > 0.0) {
            return bad(&key("batch_price_factor"), "must be a positive number".into());
        }
        for (name, price) in [
            ("price_cache_read_per_mtok", ep.price_cache_read_per_mtok),
            ("price_cache_write_per_mtok", ep.price_cache_write_per_mtok),
        ] {
            if price.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
                return bad(&key(name), "must be a non-negative number".into());
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_redacted("DatabaseSettings", self, f)
    }
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_redacted("BrokerSettings", self, f)
    }
}

impl std::fmt::Debug for EndpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_redacted("EndpointSettings", self, f)
    }
}

/// `Debug` of a settings table whose URL may carry credentials: its serialised form, with
/// `url` and `base_url` passed through [`redact_url`].
fn debug_redacted<T: Serialize>(name: &str, v: &T, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let mut json = serde_json::to_value(v).map_err(|_| std::fmt::Error)?;
    if let Some(map) = json.as_object_mut() {
        for key in ["url", "base_url"] {
            if let Some(serde_json::Value::String(u)) = map.get_mut(key) {
                *u = redact_url(u);
            }
        }
    }
    write!(f, "{name} {json}")
}

/// The one redaction rule for a URL that leaves the process (a log line, an error, a row, a
/// `Debug`): the password of its userinfo and the values of query parameters named like secrets
/// become `***`. `scheme://user:secret@host/db?password=x` -> `scheme://user:***@host/db?password=***`.
/// The userinfo ends at the last `@` before the query, so a password holding `/` is hidden too.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://{userinfo}@{host}"),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(q) = query {
        let (q, fragment) = match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        };
        let params: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if names_a_secret(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

/// Query parameter names whose values are secrets (`password`, `api_key`, `access_token`, ...).
fn names_a_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "auth", "sig", "credential"].iter().any(|s| k.contains(s))
}

/// Every URL within `text` (an error message, a body snippet) passed through [`redact_url`].
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // Back up over the scheme's letters.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |j| j + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | '<'))
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_live_rate_of_a_spill_is_set_or_the_live_limits_summed() {
        let ep = |name: &str, mode, rpm| EndpointSettings {
            name: name.into(),
            mode,
            requests_per_minute: rpm,
            ..EndpointSettings::default()
        };
        let teacher = |eps| TeacherSettings { endpoints: eps, ..TeacherSettings::default() };
        let b = BatchSettings::default();
        let t = teacher(vec![
            ep("b", EndpointMode::Batch, 0),
            ep("l1", EndpointMode::Live, 600),
            ep("l2", EndpointMode::Live, 1200),
        ]);
        assert_eq!(b.live_rate(&t), Some(30.0), "10 + 20 per second; the batch endpoint does not count");
        let t = teacher(vec![ep("l1", EndpointMode::Live, 600), ep("l2", EndpointMode::Live, 0)]);
        assert_eq!(b.live_rate(&t), None, "an unlimited live endpoint: not known");
        assert_eq!(BatchSettings { live_tasks_per_sec: 5.0, ..b }.live_rate(&t), Some(5.0));
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-06T23:00:00Z").map(|t| t.with_timezone(&chrono::Utc));
        let now = now.unwrap_or_default();
        assert_eq!(parse_deadline("06:00", now).map(|d| d.to_rfc3339()), Ok("2026-12-07T06:00:00+00:00".to_string()));
        assert!(parse_deadline("6 am", now).is_err());
    }

    use super::*;

    #[test]
    fn live_reasks_of_a_batch_endpoint_need_a_live_endpoint() {
        let batch = EndpointSettings {
            name: "b".into(),
            mode: EndpointMode::Batch,
            reask: Reask::Live,
            ..EndpointSettings::default()
        };
        let mut s = Settings::default();
        s.teacher.endpoints = vec![batch.clone()];
        let err = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("teacher.endpoints[0].reask"), "{err}");
        s.teacher.endpoints.push(EndpointSettings { name: "l".into(), ..EndpointSettings::default() });
        assert!(s.validate().is_ok());
    }

    #[test]
    fn judge_endpoints_name_live_endpoints_and_leave_one_for_the_other_stages() {
        let ep = |name: &str| EndpointSettings { name: name.into(), ..EndpointSettings::default() };
        let mut s = Settings::default();
        s.teacher.endpoints = vec![ep("main"), ep("cheap")];
        s.stages.judge_endpoints = vec!["cheap".into()];
        assert!(s.validate().is_ok());
        assert!(s.stages.endpoint_serves("cheap", Stage::Judge));
        assert!(!s.stages.endpoint_serves("cheap", Stage::Reasoning));
        assert!(s.stages.endpoint_serves("main", Stage::Reasoning));
        assert!(!s.stages.endpoint_serves("main", Stage::Judge));
        let err = |s: &Settings| s.validate().err().map(|e| e.to_string()).unwrap_or_default();
        s.stages.judge_endpoints = vec!["nope".into()];
        assert!(err(&s).contains("\"nope\" is not the name"), "{}", err(&s));
        s.stages.judge_endpoints = vec!["main".into(), "cheap".into()];
        assert!(err(&s).contains("none is left"), "{}", err(&s));
        s.stages.judge_endpoints = vec!["cheap".into()];
        s.teacher.endpoints.push(EndpointSettings { mode: EndpointMode::Batch, ..ep("b") });
        assert!(err(&s).contains("batch endpoint"), "{}", err(&s));
        s.stages.judge_endpoints.clear();
        assert!(s.stages.endpoint_serves("cheap", Stage::Judge) && s.stages.endpoint_serves("cheap", Stage::Reasoning));
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Settings::default().validate().is_ok());
    }

    #[test]
    fn the_example_file_documents_exactly_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reasonrec.example.toml");
        let loaded = Settings::load(Some(&path));
        let Ok(loaded) = loaded else { panic!("{loaded:?}") };
        let as_json = |s: &Settings| serde_json::to_value(s).unwrap_or_default();
        assert_eq!(as_json(&loaded), as_json(&Settings::default()));
    }

    #[test]
    fn cache_tokens_are_priced_apart() {
        let ep =
            EndpointSettings { price_input_per_mtok: 3.0, price_output_per_mtok: 15.0, ..EndpointSettings::default() };
        let tokens = TokenUsage { input: 1_000_000, output: 1_000_000, cache_read: 500_000, cache_write: 100_000 };
        // 400k uncached x 3 + 500k read x 0.3 + 100k written x 3.75 + 1M out x 15.
        let expected = 1.2 + 0.15 + 0.375 + 15.0;
        assert!((ep.cost_usd(&tokens) - expected).abs() < 1e-9, "{}", ep.cost_usd(&tokens));
        let set =
            EndpointSettings { price_cache_read_per_mtok: Some(0.0), price_cache_write_per_mtok: Some(0.0), ..ep };
        assert!((set.cost_usd(&tokens) - (1.2 + 15.0)).abs() < 1e-9);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("postgres://postgres@h/db"), "postgres://postgres@h/db");
        assert_eq!(redact_url("http://h:1/v1"), "http://h:1/v1");
        assert_eq!(redact_url("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db", "a password holding /");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=s3cret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("https://h/v1?api_key=k&x=1#frag"), "https://h/v1?api_key=***&x=1#frag");
        assert_eq!(redact_url("not a url"), "not a url");
        let ep = EndpointSettings {
            base_url: "https://u:planted-1@h/v1?key=planted-2".into(),
            ..EndpointSettings::default()
        };
        let db = DatabaseSettings { url: "postgres://u:planted-3@h/db".into(), ..DatabaseSettings::default() };
        let printed = format!("{ep:?} {db:?} {:?}", BrokerSettings::default());
        assert!(!printed.contains("planted") && !printed.contains("guest:guest"), "{printed}");
        assert_eq!(
            redact_urls_in("error sending request for url (http://u:pw@h:1/v1/chat?token=t): refused"),
            "error sending request for url (http://u:***@h:1/v1/chat?token=***): refused"
        );
    }

    #[test]
    fn file_overrides_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("rr-settings-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let good = dir.join("good.toml");
        let _ = std::fs::write(&good, "[worker]\nconcurrency = 7\n[sampling]\nhistory_len = 4\n");
        let s = Settings::load(Some(&good));
        assert!(matches!(&s, Ok(s) if s.worker.concurrency == 7 && s.sampling.history_len == 4), "{s:?}");

        let bad = dir.join("bad.toml");
        let _ = std::fs::write(&bad, "[worker]\nconcurency = 7\n");
        let err = Settings::load(Some(&bad)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("concurency"), "error should name the unknown key: {err}");

        let url = dir.join("url.toml");
        let _ = std::fs::write(&url, "[[teacher.endpoints]]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n");
        let err = Settings::load(Some(&url)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("teacher.endpoints[0].base_url"), "{err}");

        let anthropic = dir.join("anthropic.toml");
        let endpoint = "[[teacher.endpoints]]\nname = \"claude\"\nbase_url = \"https://api.anthropic.com/v1\"\nmodel = \"claude-x\"\nprotocol = \"anthropic\"\n";
        let _ = std::fs::write(&anthropic, endpoint);
        let s = Settings::load(Some(&anthropic));
        assert!(matches!(&s, Ok(s) if s.teacher.endpoints[0].protocol == Protocol::Anthropic), "{s:?}");
        let _ = std::fs::write(&anthropic, format!("{endpoint}[teacher.endpoints.params]\ntemperature = 1.5\n"));
        let err = Settings::load(Some(&anthropic)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("teacher.endpoints[0].params.temperature"), "{err}");
        let _ = std::fs::write(&anthropic, endpoint.replace("\"anthropic\"", "\"gemini\""));
        let err = Settings::load(Some(&anthropic)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("gemini"), "an unknown protocol is named: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
