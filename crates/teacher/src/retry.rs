//! Retries around one endpoint, with every attempt recorded.

use crate::client::{ChatAnswer, TeacherClient};
use crate::error::TeacherError;
use backon::{ExponentialBuilder, Retryable};
use reasonrec_core::ChatMessage;
use reasonrec_core::attempt::AttemptRecord;
use reasonrec_core::settings::{SamplingParams, TeacherSettings};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &TeacherSettings) -> Self {
        Self {
            max_attempts: s.max_attempts.max(1),
            min_delay: Duration::from_millis(s.backoff_min_ms),
            max_delay: Duration::from_millis(s.backoff_max_ms.max(s.backoff_min_ms)),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
    }
}

fn record(
    client: &TeacherClient,
    started: chrono::DateTime<chrono::Utc>,
    t0: Instant,
    r: &Result<ChatAnswer, TeacherError>,
) -> AttemptRecord {
    let ep = client.endpoint();
    let duration_ms = i32::try_from(t0.elapsed().as_millis()).unwrap_or(i32::MAX);
    match r {
        Ok(a) => AttemptRecord {
            endpoint: ep.name.clone(),
            model: ep.model.clone(),
            started_at: started,
            duration_ms,
            http_status: Some(i32::from(a.http_status)),
            error_class: None,
            error: None,
            input_tokens: a.input_tokens as i32,
            output_tokens: a.output_tokens as i32,
            cost_usd: client.cost_usd(a.input_tokens, a.output_tokens),
        },
        Err(e) => AttemptRecord {
            endpoint: ep.name.clone(),
            model: ep.model.clone(),
            started_at: started,
            duration_ms,
            http_status: e.http_status().map(i32::from),
            error_class: Some(e.class()),
            error: Some(e.to_string()),
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        },
    }
}

/// Calls the endpoint until an answer comes back, a permanent error occurs, or the attempts are
/// spent. Transient errors back off exponentially with jitter; a server's Retry-After replaces
/// the computed delay. Returns the outcome and one record per HTTP attempt.
pub async fn call_with_retries(
    client: &TeacherClient,
    messages: &[ChatMessage],
    params: &SamplingParams,
    policy: RetryPolicy,
) -> (Result<ChatAnswer, TeacherError>, Vec<AttemptRecord>) {
    let attempts = Mutex::new(Vec::new());
    let result = (|| async {
        let started = chrono::Utc::now();
        let t0 = Instant::now();
        let r = client.chat(messages, params).await;
        let rec = record(client, started, t0, &r);
        if let Ok(mut v) = attempts.lock() {
            v.push(rec);
        }
        r
    })
    .retry(policy.backoff())
    .when(TeacherError::is_retryable)
    .adjust(|e: &TeacherError, dur| dur.map(|d| e.retry_after().unwrap_or(d)))
    .notify(|e: &TeacherError, wait| {
        tracing::debug!(endpoint = %client.endpoint().name, error_class = e.class().as_str(), wait_ms = wait.as_millis() as u64, "teacher call failed, retrying");
    })
    .await;
    (result, attempts.into_inner().unwrap_or_default())
}
