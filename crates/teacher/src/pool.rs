//! The configured endpoints and the call loop over them.
//!
//! Each attempt picks an endpoint by weight among those whose circuit lets a request through,
//! waits for its limits, and records the attempt. Transient errors back off (exponential, jitter;
//! a server's Retry-After replaces the delay and pauses that endpoint for every task); permanent
//! errors end the call; rejected credentials disable the endpoint and the call moves on to another
//! one, or reports that none is left.

use crate::client::{ChatAnswer, TeacherClient};
use crate::error::TeacherError;
use crate::health::Availability;
use crate::retry::{RetryPolicy, record};
use rand::Rng;
use reasonrec_core::ChatMessage;
use reasonrec_core::attempt::AttemptRecord;
use reasonrec_core::settings::{EndpointMode, EndpointSettings, TeacherSettings, serves_stage};
use reasonrec_core::stage::Stage;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TeacherPool {
    clients: Vec<TeacherClient>,
    policy: RetryPolicy,
    /// `stages.judge_endpoints`: they answer judge tasks, and only those.
    judge_endpoints: Vec<String>,
}

/// The result of [`TeacherPool::call`] and one record per HTTP attempt.
#[derive(Debug)]
pub struct CallOutcome {
    /// The answer and the endpoint that gave it.
    pub result: Result<(ChatAnswer, EndpointSettings), TeacherError>,
    pub attempts: Vec<AttemptRecord>,
}

enum Pick<'a> {
    Client(&'a TeacherClient),
    Wait(Duration),
    None(String),
}

impl TeacherPool {
    /// The live pool of a worker: [`Self::new`] with `stages.judge_endpoints`.
    pub fn for_worker(settings: &reasonrec_core::Settings) -> Result<Self, TeacherError> {
        Ok(Self::new(&settings.teacher)?.with_judge_endpoints(&settings.stages.judge_endpoints))
    }

    pub fn new(settings: &TeacherSettings) -> Result<Self, TeacherError> {
        let cooldown = Duration::from_secs(settings.breaker_cooldown_secs.max(1));
        // Batch endpoints are asked through their Batch API (`batch::BatchClient`), never live.
        let clients = settings
            .endpoints
            .iter()
            .filter(|e| e.mode == EndpointMode::Live)
            .map(|e| {
                TeacherClient::new(e).map(|c| {
                    c.with_breaker(settings.breaker_failures, cooldown)
                        .with_max_wait(Duration::from_secs(settings.max_retry_after_secs.max(1)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_clients(clients, RetryPolicy::from_settings(settings)))
    }

    pub fn from_clients(clients: Vec<TeacherClient>, policy: RetryPolicy) -> Self {
        Self { clients, policy, judge_endpoints: Vec::new() }
    }

    /// Sends judge tasks to `names` only, and the other stages never there
    /// (`stages.judge_endpoints`; empty: every endpoint answers every stage).
    pub fn with_judge_endpoints(mut self, names: &[String]) -> Self {
        self.judge_endpoints = names.to_vec();
        self
    }

    pub fn clients(&self) -> &[TeacherClient] {
        &self.clients
    }

    /// The endpoints that answer tasks of `stage`.
    pub fn clients_for(&self, stage: Stage) -> impl Iterator<Item = &TeacherClient> {
        self.clients.iter().filter(move |c| self.serves(c, Some(stage)))
    }

    /// Whether `c` answers tasks of `stage` (any stage: None): a judge endpoint judges only.
    fn serves(&self, c: &TeacherClient, stage: Option<Stage>) -> bool {
        stage.is_none_or(|s| serves_stage(&self.judge_endpoints, &c.endpoint().name, s))
    }

    /// An endpoint chosen at random in proportion to its weight among those that may take a
    /// request now (weight 0 = only when no weighted one may).
    fn pick(&self, stage: Option<Stage>) -> Pick<'_> {
        let mut open: Vec<&TeacherClient> = Vec::new();
        let mut earliest: Option<tokio::time::Instant> = None;
        let mut disabled = Vec::new();
        for c in self.clients.iter().filter(|c| self.serves(c, stage)) {
            match c.breaker().try_acquire() {
                Availability::Available => open.push(c),
                Availability::WaitUntil(t) => earliest = Some(earliest.map_or(t, |e| e.min(t))),
                Availability::Disabled => disabled.push(c.endpoint().name.clone()),
            }
        }
        if open.is_empty() {
            return match earliest {
                Some(t) => {
                    Pick::Wait(t.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(10)))
                }
                None => Pick::None(format!("every endpoint is disabled ({})", disabled.join(", "))),
            };
        }
        let total: u64 = open.iter().map(|c| u64::from(c.endpoint().weight)).sum();
        let chosen = if total == 0 {
            open[0]
        } else {
            let mut x = rand::rng().random_range(0..total);
            let mut chosen = open[open.len() - 1];
            for c in &open {
                let w = u64::from(c.endpoint().weight);
                if x < w {
                    chosen = c;
                    break;
                }
                x -= w;
            }
            chosen
        };
        // Half-open probes were reserved by try_acquire for the ones not chosen: give them back.
        for c in open.iter().filter(|c| !std::ptr::eq(**c, chosen)) {
            c.breaker().on_neutral();
        }
        Pick::Client(chosen)
    }

    /// Asks the teacher until an answer comes back, a permanent error occurs, the attempts are
    /// spent, no endpoint is left, or a wait would carry the call past `policy.max_call`
    /// ([`TeacherError::Deferred`]: the task goes back to the queue, its delivery is not held).
    pub async fn call(&self, messages: &[ChatMessage]) -> CallOutcome {
        self.call_with(None, messages).await
    }

    /// [`Self::call`] for a task of `stage`: only the endpoints that answer it are asked.
    pub async fn call_for(&self, stage: Stage, messages: &[ChatMessage]) -> CallOutcome {
        self.call_with(Some(stage), messages).await
    }

    async fn call_with(&self, stage: Option<Stage>, messages: &[ChatMessage]) -> CallOutcome {
        let mut attempts = Vec::new();
        let mut delays = self.policy.delays();
        let deadline = Instant::now() + self.policy.max_call;
        let past_deadline = |wait: Duration| Instant::now() + wait > deadline;
        loop {
            let client = match self.pick(stage) {
                Pick::Client(c) => c,
                Pick::Wait(d) if past_deadline(d) => {
                    let e = TeacherError::Deferred { wait: d, limit: self.policy.max_call };
                    return CallOutcome { result: Err(e), attempts };
                }
                Pick::Wait(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Pick::None(reason) => {
                    return CallOutcome { result: Err(TeacherError::NoEndpoint { reason }), attempts };
                }
            };
            let ep = client.endpoint();
            let started = chrono::Utc::now();
            let t0 = Instant::now();
            let r = client.chat(messages, &ep.params).await;
            attempts.push(record(client, started, t0, &r));
            let e = match r {
                Ok(a) => {
                    client.breaker().on_success();
                    client.limiter().on_success();
                    return CallOutcome { result: Ok((a, ep.clone())), attempts };
                }
                Err(e) => e,
            };
            match &e {
                TeacherError::Auth { status } => {
                    tracing::error!(endpoint = %ep.name, status, "endpoint refused our credentials; disabled until restart");
                    client.breaker().disable(format!("HTTP {status}"));
                    continue;
                }
                TeacherError::SpendLimit { status } => {
                    tracing::error!(endpoint = %ep.name, status, "endpoint's spend limit reached; disabled until restart");
                    client.breaker().disable(format!("spend limit (HTTP {status} without retry-after)"));
                    continue;
                }
                TeacherError::RateLimited { retry_after, .. } => {
                    client.breaker().on_neutral();
                    client.limiter().on_rate_limited();
                    if let Some(d) = retry_after {
                        client.limiter().pause_for(*d);
                    }
                }
                e if e.is_retryable() => {
                    if client.breaker().on_failure() {
                        tracing::warn!(endpoint = %ep.name, error_class = e.class().as_str(), "endpoint keeps failing; circuit open");
                    }
                }
                _ => client.breaker().on_neutral(),
            }
            if !e.is_retryable() {
                return CallOutcome { result: Err(e), attempts };
            }
            let Some(delay) = delays.next() else {
                return CallOutcome { result: Err(e), attempts };
            };
            let wait = e.retry_after().unwrap_or(delay);
            if past_deadline(wait) {
                let e = TeacherError::Deferred { wait, limit: self.policy.max_call };
                return CallOutcome { result: Err(e), attempts };
            }
            tracing::debug!(endpoint = %ep.name, error_class = e.class().as_str(), wait_ms = wait.as_millis() as u64, "teacher call failed, retrying");
            reasonrec_core::metrics::metrics().retry(&ep.name);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_by_weight() {
        let ep = |name: &str, weight| EndpointSettings { name: name.into(), weight, ..EndpointSettings::default() };
        let settings =
            TeacherSettings { endpoints: vec![ep("a", 3), ep("b", 1), ep("c", 0)], ..TeacherSettings::default() };
        let Ok(pool) = TeacherPool::new(&settings) else { panic!("pool") };
        let mut counts = std::collections::HashMap::new();
        for _ in 0..8000 {
            let name = match pool.pick(None) {
                Pick::Client(c) => c.endpoint().name.clone(),
                _ => String::new(),
            };
            *counts.entry(name).or_insert(0u32) += 1;
        }
        let a = counts.get("a").copied().unwrap_or(0);
        let b = counts.get("b").copied().unwrap_or(0);
        assert_eq!(counts.get("c"), None);
        assert!((5600..=6400).contains(&a), "a={a} b={b}");
        assert_eq!(a + b, 8000);
    }

    #[test]
    fn judge_tasks_go_to_the_judge_endpoints_only_and_the_others_never_there() {
        let ep = |name: &str| EndpointSettings { name: name.into(), ..EndpointSettings::default() };
        let settings = TeacherSettings { endpoints: vec![ep("main"), ep("cheap")], ..TeacherSettings::default() };
        let Ok(pool) = TeacherPool::new(&settings) else { panic!("pool") };
        let pool = pool.with_judge_endpoints(&["cheap".to_string()]);
        let picked = |stage| match pool.pick(Some(stage)) {
            Pick::Client(c) => c.endpoint().name.clone(),
            _ => String::new(),
        };
        for _ in 0..200 {
            assert_eq!(picked(Stage::Judge), "cheap");
            assert_eq!(picked(Stage::Reasoning), "main");
            assert_eq!(picked(Stage::ItemProfile), "main");
        }
        let names = |stage| pool.clients_for(stage).map(|c| c.endpoint().name.clone()).collect::<Vec<_>>();
        assert_eq!(names(Stage::Judge), ["cheap"]);
        assert_eq!(names(Stage::UserProfile), ["main"]);
    }
}
