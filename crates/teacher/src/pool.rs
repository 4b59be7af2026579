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
use reasonrec_core::settings::{EndpointMode, EndpointSettings, TeacherSettings};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TeacherPool {
    clients: Vec<TeacherClient>,
    policy: RetryPolicy,
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
        Self { clients, policy }
    }

    pub fn clients(&self) -> &[TeacherClient] {
        &self.clients
    }

    /// An endpoint chosen at random in proportion to its weight among those that may take a
    /// request now (weight 0 = only when no weighted one may).
    fn pick(&self) -> Pick<'_> {
        let mut open: Vec<&TeacherClient> = Vec::new();
        let mut earliest: Option<tokio::time::Instant> = None;
        let mut disabled = Vec::new();
        for c in &self.clients {
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
        let mut attempts = Vec::new();
        let mut delays = self.policy.delays();
        let deadline = Instant::now() + self.policy.max_call;
        let past_deadline = |wait: Duration| Instant::now() + wait > deadline;
        loop {
            let client = match self.pick() {
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
            let name = match pool.pick() {
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
}
