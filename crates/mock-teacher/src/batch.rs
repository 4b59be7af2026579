//! The two providers' Batch APIs: OpenAI's Files + Batch API ([`openai`]) and Anthropic's Message
//! Batches ([`anthropic`]), on the same answers as the live endpoints: a batch line is answered
//! by [`Reply`], as a live call with the same messages and `max_tokens` is.
//!
//! A batch is planned when it is created ([`Plan`]): each line's fate (answered, HTTP-level
//! error, expired) and contradiction are drawn from a generator seeded by one draw of the mock's
//! seeded RNG, the lines are shuffled (the output order) and each gets the moment it finishes,
//! evenly spread over `batch_turnaround_ms`. Nothing runs in the background: a batch's state
//! follows from the time since its creation whenever it is read, and its results are made once,
//! at the first read after it ended (that is when the lines are counted and recorded).
//!
//! - [`openai`]: `POST /v1/files`, `GET /v1/files/{id}[/content]`, `POST|GET /v1/batches`,
//!   `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.
//! - [`anthropic`]: `POST|GET /v1/messages/batches`, `GET|DELETE /v1/messages/batches/{id}`,
//!   `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results`.
//! - [`multipart`]: the `multipart/form-data` reader of uploads.

mod anthropic;
mod multipart;
mod openai;

use crate::config::MockConfig;
use crate::server::{AppState, Asked, Reply, Wire, check_credentials, overloaded_status};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, TimeDelta, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// The largest upload (`POST /v1/files`) and Anthropic create body: 256 MB, Anthropic's limit.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Both providers' processing window: a batch expires 24 h after its creation.
const WINDOW: TimeDelta = TimeDelta::hours(24);

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/files", post(openai::upload).layer(DefaultBodyLimit::max(MAX_BODY)))
        .route("/v1/files/{id}", get(openai::file))
        .route("/v1/files/{id}/content", get(openai::file_content))
        .route("/v1/batches", post(openai::create).get(openai::list))
        .route("/v1/batches/{id}", get(openai::retrieve))
        .route("/v1/batches/{id}/cancel", post(openai::cancel))
        .route(
            "/v1/messages/batches",
            post(anthropic::create).get(anthropic::list).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/v1/messages/batches/{id}", get(anthropic::retrieve).delete(anthropic::delete))
        .route("/v1/messages/batches/{id}/cancel", post(anthropic::cancel))
        .route("/v1/messages/batches/{id}/results", get(anthropic::results))
}

/// Uploaded files and the batches of both protocols, oldest first.
#[derive(Default)]
pub(crate) struct Store {
    files: std::collections::HashMap<String, openai::File>,
    openai: Vec<openai::Batch>,
    anthropic: Vec<anthropic::Batch>,
    /// Every `custom_id` of the batches created so far (both protocols), to tell a batch sent
    /// twice (`MockStats::batches_repeating_custom_ids`).
    custom_ids: std::collections::HashSet<String>,
}

impl Store {
    /// Remembers the custom ids of a batch being created; returns how many an earlier batch
    /// held already.
    fn note_custom_ids<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut repeated = 0;
        for id in ids {
            if !self.custom_ids.insert(id.to_string()) {
                repeated += 1;
            }
        }
        repeated
    }
}

/// Counts a created batch of which `repeated` custom ids an earlier batch held (none: nothing).
fn count_repeats(state: &AppState, repeated: u64) {
    if repeated > 0 {
        state.stats(|s| {
            s.batches_repeating_custom_ids += 1;
            s.batch_lines_repeated += repeated;
        });
    }
}

/// A fresh id: `prefix` and 24 hex digits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

/// Counts a Batch API call and checks its credentials as the live path of `wire` does.
fn enter(state: &AppState, wire: Wire, headers: &HeaderMap) -> Result<(), Box<Response>> {
    state.stats(|s| s.batch_requests += 1);
    check_credentials(state, wire, headers)
}

/// One draw of `batch_overloaded_rate` for a create or retrieve call: the refusal to answer, if
/// drawn (Anthropic 529 `overloaded_error`, OpenAI 500). Draws nothing when the rate is 0.
fn overloaded(state: &AppState, wire: Wire, cfg: &MockConfig) -> Option<Response> {
    if cfg.batch_overloaded_rate <= 0.0 {
        return None;
    }
    let draw: f64 = state.rng.lock().map(|mut r| r.random()).unwrap_or(1.0);
    if draw >= cfg.batch_overloaded_rate {
        return None;
    }
    state.stats(|s| s.batch_overloaded += 1);
    Some(match wire {
        Wire::OpenAi => wire.error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "The server is overloaded."),
        Wire::Anthropic => wire.error(overloaded_status(), "", "Overloaded"),
    })
}

/// The answer to a create call whose batch was created, lost when `batch_lose_create_response`
/// says so (counted down).
fn lose_create_response(state: &AppState, wire: Wire) -> Option<Response> {
    if !state.take_lost_create() {
        return None;
    }
    state.stats(|s| s.batch_create_responses_lost += 1);
    let kind = match wire {
        Wire::OpenAi => "server_error",
        Wire::Anthropic => "",
    };
    Some(wire.error(StatusCode::INTERNAL_SERVER_ERROR, kind, "The server had an error while processing your request."))
}

/// The answer when the store's lock is poisoned (a handler panicked).
fn poisoned(wire: Wire) -> Response {
    wire.error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the mock's batch store is unavailable")
}

/// A seed for a new batch's own generator: one draw of the mock's seeded RNG.
fn batch_seed(state: &AppState) -> u64 {
    state.rng.lock().map(|mut r| r.random()).unwrap_or(0)
}

/// How a response shows a batch: as it stands, or as the call that changed it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    AsItStands,
    /// The create call's answer: just accepted (OpenAI `validating`, Anthropic `in_progress`),
    /// even when its turnaround is 0.
    Created,
    /// The cancel call's answer: cancellation under way, even when it took no time.
    Cancelling,
}

/// What becomes of a line, drawn when its batch is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Run,
    /// An HTTP-level error (`batch_line_error_rate`).
    Fail,
    /// Never runs (`batch_expire_rate`).
    Expire,
}

/// One line of a batch.
struct Line {
    custom_id: String,
    /// The request, or the message of the 400 it gets (invalid, or over the context window).
    request: Result<Asked, String>,
    fate: Fate,
    contradict: bool,
    /// When the line finishes, after the batch's creation.
    finish: TimeDelta,
}

/// How a batch's processing stands at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Every line done, results being prepared (OpenAI) since then.
    Finalizing(DateTime<Utc>),
    /// Cancel requested then.
    Cancelling(DateTime<Utc>),
    Ended(DateTime<Utc>, End),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    /// At least one line never ran within the window.
    Expired,
    Cancelled,
}

/// The outcome of one line of an ended batch.
enum Done<'a> {
    /// The answer, and the request it answers.
    Answered(Reply, &'a Asked),
    /// A 400: the message.
    Refused(String),
    /// An injected HTTP-level error.
    Failed,
    Expired,
    Cancelled,
}

/// What a batch will do, fixed when it is created.
struct Plan {
    created: DateTime<Utc>,
    /// How long the lines take (`batch_turnaround_ms`).
    run: TimeDelta,
    /// `finalizing` dwell after the lines are done (OpenAI only).
    finalizing: TimeDelta,
    /// `cancelling` dwell after a cancel.
    cancelling: TimeDelta,
    /// In output (= processing) order.
    lines: Vec<Line>,
    cancel_at: Option<DateTime<Utc>>,
    /// The knobs at creation: the answers' model, usage and recording follow them.
    cfg: MockConfig,
}

impl Plan {
    /// Plans `requests` (custom id, request or its 400) under `cfg`: the context window is
    /// checked in `wire`'s words, fates are drawn from `seed`, lines shuffled and timed.
    fn new(cfg: MockConfig, wire: Wire, seed: u64, requests: Vec<(String, Result<Asked, String>)>) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut lines: Vec<Line> = requests
            .into_iter()
            .map(|(custom_id, request)| {
                let request = request.and_then(|asked| match asked.context_overflow(&cfg, wire) {
                    Some(message) => Err(message),
                    None => Ok(asked),
                });
                let draw: f64 = rng.random();
                let fate = if draw < cfg.batch_expire_rate {
                    Fate::Expire
                } else if draw < cfg.batch_expire_rate + cfg.batch_line_error_rate {
                    Fate::Fail
                } else {
                    Fate::Run
                };
                let contradict = rng.random::<f64>() < cfg.rate_contradict;
                Line { custom_id, request, fate, contradict, finish: TimeDelta::zero() }
            })
            .collect();
        lines.shuffle(&mut rng);
        let run_ms = cfg.batch_turnaround_ms.min(i64::MAX as u64 / 2);
        let n = lines.len().max(1) as u64;
        for (k, line) in lines.iter_mut().enumerate() {
            let ms = u128::from(run_ms) * (k as u128 + 1) / u128::from(n);
            line.finish = TimeDelta::milliseconds(ms as i64);
        }
        let dwell = TimeDelta::milliseconds(cfg.batch_finalizing_ms.min(i64::MAX as u64 / 2) as i64);
        Self {
            created: Utc::now(),
            run: TimeDelta::milliseconds(run_ms as i64),
            finalizing: if wire == Wire::OpenAi { dwell } else { TimeDelta::zero() },
            cancelling: dwell,
            lines,
            cancel_at: None,
            cfg,
        }
    }

    fn run_end(&self) -> DateTime<Utc> {
        self.created + self.run
    }

    fn expires_at(&self) -> DateTime<Utc> {
        self.created + WINDOW
    }

    /// Lines count as done up to here: the end of the run, or the cancel if earlier.
    fn cutoff(&self) -> DateTime<Utc> {
        self.cancel_at.map_or(self.run_end(), |c| c.min(self.run_end()))
    }

    fn phase(&self, now: DateTime<Utc>) -> Phase {
        if let Some(at) = self.cancel_at {
            let end = at + self.cancelling;
            return if now < end { Phase::Cancelling(at) } else { Phase::Ended(end, End::Cancelled) };
        }
        let run_end = self.run_end();
        if now < run_end {
            return Phase::Running;
        }
        if self.lines.iter().any(|l| l.fate == Fate::Expire) {
            return Phase::Ended(run_end, End::Expired);
        }
        let end = run_end + self.finalizing;
        if now < end { Phase::Finalizing(run_end) } else { Phase::Ended(end, End::Completed) }
    }

    fn done_by(&self, line: &Line, at: DateTime<Utc>) -> bool {
        line.fate != Fate::Expire && self.created + line.finish <= at
    }

    /// Lines done by `now` (at most the cutoff): (answered, failed).
    fn progress(&self, now: DateTime<Utc>) -> (u64, u64) {
        let at = now.min(self.cutoff());
        let mut counts = (0, 0);
        for line in self.lines.iter().filter(|l| self.done_by(l, at)) {
            match (&line.request, line.fate) {
                (Ok(_), Fate::Run) => counts.0 += 1,
                _ => counts.1 += 1,
            }
        }
        counts
    }

    /// Cancels a running batch now; false when it is no longer running (ended, or already
    /// cancelled).
    fn cancel(&mut self, now: DateTime<Utc>) -> bool {
        match self.phase(now) {
            Phase::Running | Phase::Finalizing(_) => {
                self.cancel_at = Some(now);
                true
            }
            Phase::Cancelling(_) | Phase::Ended(..) => false,
        }
    }

    /// The outcome of every line of an ended batch, in output order: answers are made here,
    /// by the live path's [`Reply`]; the lines are counted in the stats and the ones that ran
    /// recorded.
    fn finish(&self, state: &AppState) -> Vec<(&Line, Done<'_>)> {
        let cutoff = self.cutoff();
        let cancelled = self.cancel_at.is_some();
        let out: Vec<(&Line, Done<'_>)> = self
            .lines
            .iter()
            .map(|line| {
                let done = if !self.done_by(line, cutoff) {
                    if cancelled { Done::Cancelled } else { Done::Expired }
                } else {
                    match (&line.request, line.fate) {
                        (Err(message), _) => Done::Refused(message.clone()),
                        (Ok(asked), Fate::Fail) => {
                            state.record(self.cfg.record_requests, &asked.messages);
                            Done::Failed
                        }
                        (Ok(asked), _) => {
                            state.record(self.cfg.record_requests, &asked.messages);
                            Done::Answered(Reply::new(asked, line.contradict), asked)
                        }
                    }
                };
                (line, done)
            })
            .collect();
        state.stats(|s| {
            for (_, done) in &out {
                match done {
                    Done::Answered(r, _) => {
                        s.batch_lines_succeeded += 1;
                        s.batch_prompt_tokens += u64::from(r.prompt_tokens);
                        s.batch_completion_tokens += u64::from(r.completion_tokens);
                        *s.batch_by_kind.entry(r.kind.to_string()).or_default() += 1;
                    }
                    Done::Refused(_) | Done::Failed => s.batch_lines_errored += 1,
                    Done::Expired => s.batch_lines_expired += 1,
                    Done::Cancelled => s.batch_lines_cancelled += 1,
                }
            }
        });
        out
    }
}

/// One page of a newest-first list of `ids` (oldest first as stored): the indices of the page,
/// starting after `after` (older than it) or, with `before`, ending before it (newer than it),
/// and whether more follow in that direction. An unknown cursor gives an empty page.
fn page(ids: &[&str], limit: usize, after: Option<&str>, before: Option<&str>) -> (Vec<usize>, bool) {
    let newest_first: Vec<usize> = (0..ids.len()).rev().collect();
    let position = |id: &str| newest_first.iter().position(|&i| ids[i] == id);
    match (after, before) {
        (_, Some(before)) => {
            let Some(end) = position(before) else {
                return (Vec::new(), false);
            };
            let start = end.saturating_sub(limit);
            (newest_first[start..end].to_vec(), start > 0)
        }
        (Some(after), None) => {
            let Some(at) = position(after) else {
                return (Vec::new(), false);
            };
            let rest = &newest_first[at + 1..];
            (rest.iter().take(limit).copied().collect(), rest.len() > limit)
        }
        (None, None) => (newest_first.iter().take(limit).copied().collect(), newest_first.len() > limit),
    }
}

/// `limit` of a list call: its default when absent, else within [1, max].
fn list_limit(query: &std::collections::HashMap<String, String>, max: usize) -> Result<usize, String> {
    match query.get("limit") {
        None => Ok(20),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("limit: must be an integer within [1, {max}]")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_go_newest_first_from_either_cursor() {
        let ids = ["a", "b", "c", "d", "e"];
        assert_eq!(page(&ids, 2, None, None), (vec![4, 3], true));
        assert_eq!(page(&ids, 2, Some("d"), None), (vec![2, 1], true));
        assert_eq!(page(&ids, 2, Some("b"), None), (vec![0], false));
        assert_eq!(page(&ids, 2, None, Some("b")), (vec![3, 2], true));
        assert_eq!(page(&ids, 5, None, Some("c")), (vec![4, 3], false));
        assert_eq!(page(&ids, 2, Some("x"), None), (vec![], false));
    }

    #[test]
    fn custom_ids_held_by_an_earlier_batch_are_counted() {
        let mut store = Store::default();
        assert_eq!(store.note_custom_ids(["b1_0", "b1_1"]), 0);
        assert_eq!(store.note_custom_ids(["b2_0"]), 0, "another batch's ids");
        assert_eq!(store.note_custom_ids(["b1_1", "b1_0", "b3_0"]), 2, "batch b1 sent again");
    }

    fn asked(text: &str) -> Asked {
        Asked {
            model: "m".into(),
            messages: vec![reasonrec_core::ChatMessage { role: "user".into(), content: text.into() }],
            max_tokens: Some(100),
        }
    }

    #[test]
    fn lines_finish_evenly_over_the_turnaround_and_a_cancel_keeps_the_finished() {
        let cfg = MockConfig { batch_turnaround_ms: 1000, batch_finalizing_ms: 100, ..MockConfig::default() };
        let requests = (0..4).map(|i| (format!("r{i}"), Ok(asked(&format!("q{i}"))))).collect();
        let mut plan = Plan::new(cfg, Wire::OpenAi, 7, requests);
        let t0 = plan.created;
        let finishes: Vec<i64> = plan.lines.iter().map(|l| l.finish.num_milliseconds()).collect();
        assert_eq!(finishes, vec![250, 500, 750, 1000]);
        assert_eq!(plan.phase(t0), Phase::Running);
        assert_eq!(plan.progress(t0 + TimeDelta::milliseconds(600)), (2, 0));
        assert_eq!(plan.phase(t0 + TimeDelta::milliseconds(1000)), Phase::Finalizing(t0 + plan.run));
        let done = t0 + TimeDelta::milliseconds(1100);
        assert_eq!(plan.phase(done), Phase::Ended(done, End::Completed));

        let at = t0 + TimeDelta::milliseconds(600);
        assert!(plan.cancel(at));
        assert!(!plan.cancel(at), "a second cancel changes nothing");
        assert_eq!(plan.phase(at), Phase::Cancelling(at));
        let end = at + TimeDelta::milliseconds(100);
        assert_eq!(plan.phase(end), Phase::Ended(end, End::Cancelled));
        assert_eq!(plan.progress(end), (2, 0));
    }

    #[test]
    fn fates_follow_the_rates() {
        let cfg = MockConfig { batch_expire_rate: 1.0, ..MockConfig::default() };
        let plan = Plan::new(cfg, Wire::Anthropic, 1, vec![("a".into(), Ok(asked("q")))]);
        assert_eq!(plan.lines[0].fate, Fate::Expire);
        assert_eq!(plan.phase(plan.created), Phase::Ended(plan.created, End::Expired));
        let cfg = MockConfig { batch_line_error_rate: 1.0, context_tokens: 10, ..MockConfig::default() };
        let plan = Plan::new(cfg, Wire::OpenAi, 1, vec![("a".into(), Ok(asked("q")))]);
        assert_eq!(plan.lines[0].fate, Fate::Fail);
        assert!(plan.lines[0].request.as_ref().is_err_and(|m| m.contains("maximum context length")));
    }
}
