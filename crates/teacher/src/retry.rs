//! Retry policy and the attempt records of the cost ledger.

use crate::client::{ChatAnswer, TeacherClient};
use crate::error::TeacherError;
use crate::pool::{CallOutcome, TeacherPool};
use backon::{BackoffBuilder, ExponentialBuilder};
use reasonrec_core::ChatMessage;
use reasonrec_core::attempt::AttemptRecord;
use reasonrec_core::settings::{SamplingParams, TeacherSettings};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// The longest one call may take, waits included (`teacher.max_call_secs`): a wait that
    /// would end past it ends the call with [`TeacherError::Deferred`].
    pub max_call: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &TeacherSettings) -> Self {
        Self {
            max_attempts: s.max_attempts.max(1),
            min_delay: Duration::from_millis(s.backoff_min_ms),
            max_delay: Duration::from_millis(s.backoff_max_ms.max(s.backoff_min_ms)),
            max_call: Duration::from_secs(s.max_call_secs.max(1)),
        }
    }

    /// Delays between attempts: exponential with jitter, `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }
}

/// The ledger row of one HTTP attempt (also counted in the process's metrics).
pub fn record(
    client: &TeacherClient,
    started: chrono::DateTime<chrono::Utc>,
    t0: Instant,
    r: &Result<ChatAnswer, TeacherError>,
) -> AttemptRecord {
    let ep = client.endpoint();
    let duration_ms = i32::try_from(t0.elapsed().as_millis()).unwrap_or(i32::MAX);
    let rec = match r {
        Ok(a) => AttemptRecord {
            id: uuid::Uuid::now_v7(),
            endpoint: ep.name.clone(),
            model: ep.model.clone(),
            started_at: started,
            duration_ms,
            http_status: Some(i32::from(a.http_status)),
            error_class: None,
            error: None,
            input_tokens: i32::try_from(a.input_tokens).unwrap_or(i32::MAX),
            output_tokens: i32::try_from(a.output_tokens).unwrap_or(i32::MAX),
            cost_usd: client.cost_usd(&a.usage()),
        },
        Err(e) => AttemptRecord {
            id: uuid::Uuid::now_v7(),
            endpoint: ep.name.clone(),
            model: ep.model.clone(),
            started_at: started,
            duration_ms,
            http_status: e.http_status().map(i32::from),
            error_class: Some(e.class()),
            error: Some(e.to_string()),
            // A 2xx answer we could not use was billed all the same ([`TeacherError::billed`]).
            input_tokens: e.billed().map_or(0, |u| i32::try_from(u.input).unwrap_or(i32::MAX)),
            output_tokens: e.billed().map_or(0, |u| i32::try_from(u.output).unwrap_or(i32::MAX)),
            cost_usd: e.billed().map_or(0.0, |u| client.cost_usd(&u)),
        },
    };
    reasonrec_core::metrics::metrics().attempt(&rec);
    rec
}

/// Calls one endpoint until an answer comes back, a permanent error occurs, or the attempts are
/// spent (see [`TeacherPool::call`], which this runs with a pool of one). `params` replaces the
/// endpoint's own sampling parameters.
pub async fn call_with_retries(
    client: &TeacherClient,
    messages: &[ChatMessage],
    params: &SamplingParams,
    policy: RetryPolicy,
) -> (Result<ChatAnswer, TeacherError>, Vec<AttemptRecord>) {
    let mut one = client.clone();
    one.set_params(params.clone());
    let pool = TeacherPool::from_clients(vec![one], policy);
    let CallOutcome { result, attempts } = pool.call(messages).await;
    (result.map(|(a, _)| a), attempts)
}
